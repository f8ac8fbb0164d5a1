"""Feature extraction wall time and driver memory: the local engine vs the Ray engine on a simulated cluster of
1 and 2 one-CPU nodes (ray.cluster_utils.Cluster on this machine).

    python bench/ray_extraction.py --data ../shared/datasets/caltech101/101_ObjectCategories [--limit 500]
    python bench/ray_extraction.py --generate 60000 --data /tmp/generated60k --image-size 64 --modes local,ray-1

Each configuration runs in its own process with an empty feature cache (the trunk is exported before the clock
starts). Besides the process's lifetime peak RSS (ru_maxrss, which the trunk export's torch import can set), a
thread samples the driver's RSS during the extraction alone: its growth over the RSS just before is what the
extraction keeps on the driver. `--generate N` first writes N small, all-different JPEGs in 10 class folders under
--data (kept if already there): a folder far larger than Caltech-101 for the memory question. Prints one JSON line
per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

MODES = ("local", "ray-1", "ray-2")
CLASSES = 10


def rss_mb() -> dict[str, float]:
    """This process's resident memory now (MB): total, anonymous (heap) and shared (the object store's pages)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssShmem"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


class PeakSampler:
    """The largest RSS (total, anonymous) seen while the block runs, sampled every 50 ms."""

    def __init__(self):
        self.peak = {"VmRSS": 0.0, "RssAnon": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = rss_mb()
            self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}
            self._stop.wait(0.05)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._run_once()

    def _run_once(self) -> None:
        now = rss_mb()
        self.peak = {k: max(v, now[k]) for k, v in self.peak.items()}


def measure(mode: str, data: Path, limit: int | None, image_size: int | None) -> dict:
    from transferlab.data.layouts import image_files
    from transferlab.features.extractor import FeatureExtractor

    paths = image_files([data])[:limit] if limit else image_files([data])
    extractor = FeatureExtractor(cache_dir=os.environ["TRANSFERLAB_CACHE"], quiet=True, image_size=image_size)
    extractor.runner.session()  # export the trunk before the clock starts (both engines share the file)
    if mode == "local":
        before = rss_mb()
        start = time.perf_counter()
        with PeakSampler() as sampler:
            extractor.extract(paths)
        seconds = time.perf_counter() - start
    else:
        seconds, before, sampler = on_ray(extractor, paths, nodes=int(mode.split("-")[1]))
    size = extractor.spec.input_size
    width = extractor.run_batch(np.zeros((1, size, size, 3), np.uint8)).shape[1]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "images": len(paths), "image_size": extractor.spec.input_size, "seconds": round(seconds, 1),
            "images_per_second": round(len(paths) / seconds, 1), "peak_driver_rss_mb": round(peak_mb),
            "rss_before_mb": round(before["VmRSS"]), "peak_during_mb": round(sampler.peak["VmRSS"]),
            "growth_mb": round(sampler.peak["VmRSS"] - before["VmRSS"]),
            "anon_growth_mb": round(sampler.peak["RssAnon"] - before["RssAnon"]),
            "feature_array_mb": round(len(paths) * width * 4 / 2**20)}


def on_ray(extractor, paths, nodes: int):
    """(seconds, RSS before, peak sampler) of a Ray extraction, actor start-up included, cluster start-up not."""
    import ray
    from ray.cluster_utils import Cluster

    from transferlab.engines import ray_extraction as ray_engine

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray_engine.connect(cluster.address, quiet=True)
        before = rss_mb()
        start = time.perf_counter()
        with PeakSampler() as sampler:
            ray_engine.extract_to_cache(extractor, paths)
        return time.perf_counter() - start, before, sampler
    finally:
        ray.shutdown()
        cluster.shutdown()


def generate_chunk(folder: Path, first: int, count: int) -> None:
    """Images first..first+count-1: a class colour, a random gradient, noise and a dark square, so every file (and
    every cache key) differs and the content varies like photos do, cheaply."""
    from PIL import Image

    rng = np.random.default_rng(first)
    for i in range(first, first + count):
        label = i % CLASSES
        size = int(rng.integers(64, 129))
        colour = np.array([(label * 53) % 256, (label * 97) % 256, (label * 151) % 256], np.float32)
        ramp = np.linspace(0, rng.uniform(-80, 80), size, dtype=np.float32)[:, None, None]
        pixels = colour + ramp + rng.normal(0, 25, (size, size, 3)).astype(np.float32)
        x, y = rng.integers(0, size // 2, 2)
        pixels[y : y + size // 3, x : x + size // 3] *= 0.3
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
            folder / f"class_{label}" / f"img_{i:06d}.jpg", quality=85)


def generate(folder: Path, count: int) -> None:
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.jpg")) == count:
        return
    for label in range(CLASSES):
        (folder / f"class_{label}").mkdir(parents=True, exist_ok=True)
    chunk = 1000
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(generate_chunk, [folder] * (count // chunk + 1), range(0, count, chunk),
                      [min(chunk, count - s) for s in range(0, count, chunk)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--image-size", type=int, default=None, help="network input size (default: the backbone's)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--generate", type=int, default=None, help="first write this many generated JPEGs under --data")
    parser.add_argument("--mode", choices=MODES, help="(internal) measure one configuration in this process")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.data, args.limit, args.image_size)))
        return
    if args.generate:
        started = time.perf_counter()
        generate(args.data, args.generate)
        print(f"# {args.generate} images under {args.data} in {time.perf_counter() - started:.0f} s", flush=True)
    for mode in args.modes.split(","):
        with tempfile.TemporaryDirectory() as cache:
            command = [sys.executable, __file__, "--data", str(args.data), "--mode", mode]
            command += ["--limit", str(args.limit)] if args.limit else []
            command += ["--image-size", str(args.image_size)] if args.image_size else []
            shown = subprocess.run(command, env={**os.environ, "TRANSFERLAB_CACHE": cache}, capture_output=True,
                                   text=True, check=True)
            print(shown.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()

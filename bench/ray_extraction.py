"""Feature extraction wall time and peak driver memory: the local engine vs the Ray engine on a simulated
cluster of 1 and 2 one-CPU nodes (ray.cluster_utils.Cluster on this machine).

    python bench/ray_extraction.py --data ../shared/datasets/caltech101/101_ObjectCategories [--limit 500]

Each configuration runs in its own process with an empty feature cache (the trunk is exported before the clock
starts), so its peak RSS is the driver's own. Prints one JSON line per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("local", "ray-1", "ray-2")


def measure(mode: str, data: Path, limit: int | None) -> dict:
    from transferlab.features import FeatureExtractor
    from transferlab.layouts import image_files

    paths = image_files([data])[:limit] if limit else image_files([data])
    extractor = FeatureExtractor(cache_dir=os.environ["TRANSFERLAB_CACHE"], quiet=True)
    extractor.runner.session()  # export the trunk before the clock starts (both engines share the file)
    if mode == "local":
        start = time.perf_counter()
        extractor.extract(paths)
        seconds = time.perf_counter() - start
    else:
        seconds = on_ray(extractor, paths, nodes=int(mode.split("-")[1]))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "images": len(paths), "seconds": round(seconds, 1),
            "images_per_second": round(len(paths) / seconds, 1), "peak_driver_rss_mb": round(peak_mb)}


def on_ray(extractor, paths, nodes: int) -> float:
    """Seconds of a Ray extraction, actor start-up included, cluster start-up not."""
    import ray
    from ray.cluster_utils import Cluster

    from transferlab import ray_engine

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray_engine.connect(cluster.address, quiet=True)
        start = time.perf_counter()
        ray_engine.extract_to_cache(extractor, paths)
        return time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="only the first N images")
    parser.add_argument("--mode", choices=MODES, help="(internal) measure one configuration in this process")
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(measure(args.mode, args.data, args.limit)))
        return
    for mode in MODES:
        with tempfile.TemporaryDirectory() as cache:
            command = [sys.executable, __file__, "--data", str(args.data), "--mode", mode]
            command += ["--limit", str(args.limit)] if args.limit else []
            shown = subprocess.run(command, env={**os.environ, "TRANSFERLAB_CACHE": cache}, capture_output=True,
                                   text=True, check=True)
            print(shown.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()

"""int8 extraction (issue 11, item 4): speed and Caltech-101/97 accuracy of float32 vs int8 trunks per backbone.

    .venv/bin/python bench/int8.py [--backbones efficientnet_lite0,efficientnet_lite1] [--speed-images 256] [--repeats 5]

1. Speed: the same decoded images run through the float32 and the int8 trunk (ONNX Runtime), alternately,
   `--repeats` times each; img/s of the trunk alone (decoding excluded), median and range.
2. Accuracy: `transferlab train CALTECH --exclude ... --seed 0 --precision float32|int8` (the split of
   bench/caltech.py), each cold in a subprocess with the same cache folder (float first, so the int8 run finds the
   float ONNX export as any second run would); test and validation accuracy, extraction img/s (decoding included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import CALTECH_EXCLUDED, machine, require_caltech

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def trunk_speed(backbone: str, data: Path, cache: Path, n_images: int, repeats: int) -> dict:
    """img/s of the float and int8 trunks on the same decoded images, runs interleaved."""
    from transferlab.data.dataset import load_dataset
    from transferlab.features.extractor import FeatureExtractor

    split = load_dataset(data, exclude=CALTECH_EXCLUDED.split(","), seed=0)
    common = dict(runtime="onnx", device="cpu", cache_dir=cache, quiet=True)
    float32 = FeatureExtractor(backbone, **common)
    int8 = FeatureExtractor(backbone, precision="int8", **common)
    int8.calibrate_on(split.train.paths)  # the calibration the training run below uses: its trunk is then cached
    int8.runner.session()
    images = np.stack([float32.prepare(p) for p in split.test.paths[:n_images]])
    rates: dict[str, list[float]] = {"float32": [], "int8": []}
    for _ in range(repeats):
        for name, extractor in (("float32", float32), ("int8", int8)):
            extractor.run_batch(images[:8])  # warm: first runs allocate
            start = time.perf_counter()
            for i in range(0, len(images), 32):
                extractor.run_batch(images[i : i + 32])
            rates[name].append(len(images) / (time.perf_counter() - start))
    return {"rates": rates, "n_images": len(images)}


def train(data: Path, out: Path, cache: Path, backbone: str, precision: str) -> tuple[float, dict]:
    command = [sys.executable, "-m", "transferlab", "--quiet", "train", str(data), "--exclude", CALTECH_EXCLUDED,
               "--backbone", backbone, "--precision", precision, "--runtime", "onnx", "--seed", "0", "--out", str(out)]
    start = time.perf_counter()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "TRANSFERLAB_CACHE": str(cache), "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start, json.loads((out / "metrics.json").read_text())


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--speed-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    data = require_caltech()
    rows, raw = [], {}
    for backbone in args.backbones.split(","):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
            # the accuracy runs first: cold extraction for both; the speed check then finds the int8 trunk cached
            results = {p: train(data, Path(runs) / p, Path(cache), backbone, p) for p in ("float32", "int8")}
            speed = trunk_speed(backbone, data, Path(cache), args.speed_images, args.repeats)
        raw[backbone] = {"speed": speed, "runs": {p: {"seconds": s, **{k: v for k, v in m.items() if k != "test"}}
                                                  for p, (s, m) in results.items()}}
        f, q = (results[p][1] for p in ("float32", "int8"))
        ratio = statistics.median(speed["rates"]["int8"]) / statistics.median(speed["rates"]["float32"])
        rows.append(
            f"| {backbone} | {spread(speed['rates']['float32'])} | {spread(speed['rates']['int8'])} | x{ratio:.2f} | "
            f"{f['images_per_second']:.0f} / {q['images_per_second']:.0f} | {f['test_accuracy']:.2%} | "
            f"{q['test_accuracy']:.2%} | {100 * (q['test_accuracy'] - f['test_accuracy']):+.2f} | "
            f"{f['val_accuracy']:.2%} / {q['val_accuracy']:.2%} | {results['float32'][0]:.0f} / {results['int8'][0]:.0f} |"
        )
        print(rows[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    print(f"\nmachine: {machine()}")
    print(f"command: python bench/int8.py --backbones {args.backbones} --speed-images {args.speed_images} "
          f"--repeats {args.repeats}\n")
    print("| backbone | trunk img/s float32 | trunk img/s int8 | speed-up | extraction img/s float32 / int8 (cold, "
          "with decoding) | test float32 | test int8 | delta (points) | val float32 / int8 | wall s float32 / int8 (cold) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

"""int8 extraction (issue 11, item 4): speed and Caltech-101/97 accuracy of float32 vs int8 trunks per backbone.

    .venv/bin/python bench/int8.py [--backbones efficientnet_lite0,efficientnet_lite1] [--speed-images 256] [--repeats 5]
                                   [--speed-only]

1. Speed: the same decoded images run through the float32 and the int8 trunk (ONNX Runtime), alternately,
   `--repeats` times each; img/s of the trunk alone (decoding excluded), median and range; and the cosine of each
   image's int8 features to its float32 ones (mean, lowest): what saturating int8 kernels would lower.
   `--speed-only` skips step 2 (the int8 trunk is then calibrated here, on the training images step 2 would use).
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
    features = {name: np.concatenate([e.run_batch(images[i : i + 32]) for i in range(0, len(images), 32)])
                for name, e in (("float32", float32), ("int8", int8))}
    cosine = (features["float32"] * features["int8"]).sum(1) / np.prod(
        [np.linalg.norm(f, axis=1) for f in features.values()], axis=0)
    rates: dict[str, list[float]] = {"float32": [], "int8": []}
    for _ in range(repeats):
        for name, extractor in (("float32", float32), ("int8", int8)):
            extractor.run_batch(images[:8])  # warm: first runs allocate
            start = time.perf_counter()
            for i in range(0, len(images), 32):
                extractor.run_batch(images[i : i + 32])
            rates[name].append(len(images) / (time.perf_counter() - start))
    return {"rates": rates, "n_images": len(images), "cosine": [float(cosine.mean()), float(cosine.min())]}


def train(data: Path, out: Path, cache: Path, backbone: str, precision: str) -> tuple[float, dict]:
    command = [sys.executable, "-m", "transferlab", "--quiet", "train", str(data), "--exclude", CALTECH_EXCLUDED,
               "--backbone", backbone, "--precision", precision, "--runtime", "onnx", "--seed", "0", "--out", str(out)]
    start = time.perf_counter()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "TRANSFERLAB_CACHE": str(cache), "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start, json.loads((out / "metrics.json").read_text())


def row(backbone: str, speed: dict, results: dict) -> str:
    """One table row; the training columns are '-' with --speed-only."""
    ratio = statistics.median(speed["rates"]["int8"]) / statistics.median(speed["rates"]["float32"])
    cells = [backbone, spread(speed["rates"]["float32"]), spread(speed["rates"]["int8"]), f"x{ratio:.2f}",
             "{:.4f}, {:.4f}".format(*speed["cosine"])]
    if results:
        (fs, f), (qs, q) = (results[p] for p in ("float32", "int8"))
        cells += [f"{f['images_per_second']:.0f} / {q['images_per_second']:.0f}", f"{f['test_accuracy']:.2%}",
                  f"{q['test_accuracy']:.2%}", f"{100 * (q['test_accuracy'] - f['test_accuracy']):+.2f}",
                  f"{f['val_accuracy']:.2%} / {q['val_accuracy']:.2%}", f"{fs:.0f} / {qs:.0f}"]
    else:
        cells += ["-"] * 6
    return "| " + " | ".join(cells) + " |"


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default="efficientnet_lite0")
    parser.add_argument("--speed-images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--speed-only", action="store_true", help="the trunks' speed and agreement, no training runs")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    args = parser.parse_args()
    data = require_caltech()
    rows, raw = [], {}
    for backbone in args.backbones.split(","):
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
            # the accuracy runs first: cold extraction for both; the speed check then finds the int8 trunk cached
            results = {} if args.speed_only else {p: train(data, Path(runs) / p, Path(cache), backbone, p)
                                                  for p in ("float32", "int8")}
            speed = trunk_speed(backbone, data, Path(cache), args.speed_images, args.repeats)
        raw[backbone] = {"speed": speed, "runs": {p: {"seconds": s, **{k: v for k, v in m.items() if k != "test"}}
                                                  for p, (s, m) in results.items()}}
        rows.append(row(backbone, speed, results))
        print(rows[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
    print(f"\nmachine: {machine()}")
    print(f"command: python bench/int8.py --backbones {args.backbones} --speed-images {args.speed_images} "
          f"--repeats {args.repeats}{' --speed-only' if args.speed_only else ''}\n")
    print("| backbone | trunk img/s float32 | trunk img/s int8 | speed-up | cosine int8 to float32 (mean, lowest) | "
          "extraction img/s float32 / int8 (cold, with decoding) | test float32 | test int8 | delta (points) | "
          "val float32 / int8 | wall s float32 / int8 (cold) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

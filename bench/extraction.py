"""Extraction throughput: ONNX Runtime vs eager PyTorch, same backbone, same images, same pipeline.

    .venv/bin/python bench/extraction.py [--backbone efficientnet_lite0] [--n 512]

Two measurements per runtime: the network alone on a ready uint8 batch, and end to end (decode, resize,
network) through FeatureExtractor with the cache off. The first batch (warm-up, ONNX export) is excluded.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from common import CALTECH_EXCLUDED, machine, require_caltech

from transferlab.data.dataset import load_dataset
from transferlab.features.extractor import FeatureExtractor


def network_only(fx: FeatureExtractor, batch: np.ndarray, repeats: int) -> float:
    fx.run_batch(batch)  # warm-up: builds the ONNX session or the torch trunk
    start = time.perf_counter()
    for _ in range(repeats):
        fx.run_batch(batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def end_to_end(fx: FeatureExtractor, paths) -> float:
    fx.run_batch(np.stack([fx.prepare(p) for p in paths[:2]]))  # warm-up outside the timing
    start = time.perf_counter()
    fx.extract(paths)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--n", type=int, default=512)
    args = parser.parse_args()
    data = load_dataset(require_caltech(), exclude=CALTECH_EXCLUDED.split(","), seed=0)
    paths = data.train.paths[: args.n]
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for runtime in ("onnx", "torch"):
            fx = FeatureExtractor(args.backbone, runtime=runtime, device="cpu", cache_dir=cache, use_cache=False, quiet=True)
            batch = np.stack([fx.prepare(p) for p in paths[:32]])
            rows.append((runtime, network_only(fx, batch, repeats=4), end_to_end(fx, paths)))
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    print(f"backbone {args.backbone}, {len(paths)} Caltech-101 images, batch 32\n")
    print("| runtime | network only (img/s) | end to end with decoding (img/s) |")
    print("|---|---|---|")
    for runtime, net, e2e in rows:
        print(f"| {runtime} | {net:.1f} | {e2e:.1f} |")
    print(f"\nONNX Runtime speed-up: network {rows[0][1] / rows[1][1]:.2f}x, end to end {rows[0][2] / rows[1][2]:.2f}x")


if __name__ == "__main__":
    main()

"""ONNX export: float32 vs static int8 on the hymenoptera run (ants vs bees, ../shared/datasets/hymenoptera).

    .venv/bin/python bench/export.py [--seconds 10]

Trains a feature-extraction run in a temporary folder (`transferlab train`), exports it with
`transferlab export RUN --format onnx --quantize int8` and prints export.json as a markdown table:
file size, accuracy on the run's test split (its validation folder: hymenoptera has no test folder),
single-image latency, batch-16 throughput, and the largest probability difference to PyTorch.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import SHARED, machine

import transferlab
from transferlab.deploy.export import export_run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget per model")
    args = parser.parse_args()
    data = SHARED / "datasets" / "hymenoptera"
    if not data.is_dir():
        raise SystemExit(f"hymenoptera not found at {data}: the benchmarks read ../shared/datasets")
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        transferlab.train(data, out=run, seed=0, quiet=True)
        report = export_run(run, quantize="int8", timing_seconds=args.seconds)
    print(f"machine: {machine()}")
    print("command: transferlab train hymenoptera --seed 0; transferlab export RUN --format onnx --quantize int8\n")
    print("| model | MB | test accuracy | latency, 1 image (ms) | images/s (batch 16) |")
    print("|---|---:|---:|---:|---:|")
    for name, row in report["models"].items():
        print(f"| {name} | {row['megabytes']:.1f} | {row['test_accuracy']:.1%} ({row['n_test']}) | "
              f"{row['latency_ms']:.1f} | {row['images_per_second']:.0f} |")
    print(f"\nint8 speed-up x{report['int8_speedup']}; max |p_torch - p_onnx| = {report['torch_max_abs_diff']:.1e}")


if __name__ == "__main__":
    main()

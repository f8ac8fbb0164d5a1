"""Whole-network fine-tuning on the demo's digits (issue: >= 98% test in <= 5 minutes on a 2-core CPU).

Writes scikit-learn's digits as `make demo` does, then times `transferlab train` (a fresh process, a fresh feature
cache: cold) for each variant and prints test accuracy, validation accuracy and wall time as a Markdown table.

    .venv/bin/python bench/digits_finetune.py [--variant NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from demo import write_digits  # noqa: E402  (the demo's own writer: the same images)

WHOLE = ["--strategy", "finetune", "--unfreeze", "all", "--augment", "light-noflip", "--views", "1"]
VARIANTS = {
    "extract (default)": [],
    "extract 96 px": ["--image-size", "96"],
    "finetune all, 96 px, BN frozen, 6 epochs": [*WHOLE, "--image-size", "96", "--finetune-epochs", "6"],
    "finetune all, 96 px, BN train, 6 epochs": [*WHOLE, "--image-size", "96", "--finetune-epochs", "6", "--batchnorm", "train"],
    "finetune all, 64 px, BN frozen, 8 epochs": [*WHOLE, "--image-size", "64", "--finetune-epochs", "8"],
    # the batch a GPU takes for this set (1257 training images: 128) on any machine, with the default learning
    # rate scaled to it (2e-3) and without (1e-3): what the batch rule does to accuracy, device aside
    "finetune all, 96 px, batch 128 (lr 2e-3), 6 epochs": [*WHOLE, "--image-size", "96", "--finetune-epochs", "6",
                                                            "--finetune-batch-size", "128"],
    "finetune all, 96 px, batch 64 (lr 1.4e-3), 6 epochs": [*WHOLE, "--image-size", "96", "--finetune-epochs", "6",
                                                             "--finetune-batch-size", "64"],
    # as many steps as batch 32 takes in 6 epochs (240)
    "finetune all, 96 px, batch 128 (lr 2e-3), 24 epochs": [*WHOLE, "--image-size", "96", "--finetune-epochs", "24",
                                                             "--finetune-batch-size", "128"],
    "finetune all, 96 px, batch 128, lr 1e-3, 6 epochs": [*WHOLE, "--image-size", "96", "--finetune-epochs", "6",
                                                           "--finetune-batch-size", "128", "--finetune-lr", "0.001"],
}


def run(data: Path, arguments: list[str], workdir: Path) -> dict:
    env = {**os.environ, "TRANSFERLAB_CACHE": str(workdir / "cache")}
    started = time.perf_counter()
    completed = subprocess.run(
        [sys.executable, "-m", "transferlab", "--json", "train", str(data), "--out", str(workdir / "run"), *arguments],
        capture_output=True, text=True, env=env,
    )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(completed.stderr[-2000:])
    metrics = json.loads((workdir / "run" / "metrics.json").read_text())
    return {"test": metrics["test_accuracy"], "val": metrics.get("val_accuracy"), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="default: all")
    parser.add_argument("--seed", type=int, default=0, help="the runs' --seed (split, head, shuffling)")
    args = parser.parse_args()
    data = ROOT / "demo_data" / "digits"
    write_digits(data)
    print(f"{machine()}, seed {args.seed}\n")
    print("| variant | test accuracy | validation accuracy | cold wall time |\n|---|---|---|---|")
    for name in args.variant or VARIANTS:
        with tempfile.TemporaryDirectory() as workdir:
            result = run(data, [*VARIANTS[name], "--seed", str(args.seed)], Path(workdir))
        val = f"{result['val']:.2%}" if result["val"] is not None else "-"
        print(f"| {name} | {result['test']:.2%} | {val} | {result['seconds']:.0f} s |", flush=True)


if __name__ == "__main__":
    main()

"""One fine-tuning epoch on Caltech-101/97: the cached path against end to end, on this machine.

    .venv/bin/python bench/finetune_epoch.py [--unfreeze 1] [--max-per-class N]

Both runs are `transferlab.train(strategy="finetune", finetune={"epochs": 1})` on the same split, differing only
in `end_to_end`: the cached path trains the unfrozen block and the head from the boundary activations of
the cached views; end to end runs the whole network on images augmented in every batch. The number compared
is the phase-2 epoch as the training history records it (training pass + validation pass); extraction and
phase 1 are excluded (phase 1 is kept to one epoch, since end to end it also runs the frozen base per batch).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import CALTECH_EXCLUDED, machine, require_caltech

import transferlab


def phase2_epoch_seconds(data: Path, out: Path, end_to_end: bool, args: argparse.Namespace) -> tuple[float, int]:
    classifier = transferlab.train(
        data, strategy="finetune", seed=0, out=out, epochs=1, quiet=True,
        split={"exclude": CALTECH_EXCLUDED.split(","), "max_per_class": args.max_per_class},
        finetune={"epochs": 1, "unfreeze": args.unfreeze, "end_to_end": end_to_end},
    )
    return classifier.history.epochs[-1]["seconds"], classifier.metrics["n_train"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--unfreeze", default="1")
    parser.add_argument("--max-per-class", type=int, default=None, help="default: every image")
    args = parser.parse_args()
    data = require_caltech()
    with tempfile.TemporaryDirectory() as runs:
        cached, n_train = phase2_epoch_seconds(data, Path(runs) / "cached", False, args)
        end_to_end, _ = phase2_epoch_seconds(data, Path(runs) / "end-to-end", True, args)
    print(f"machine: {machine()}")
    print(f"command: bench/finetune_epoch.py --unfreeze {args.unfreeze}"
          f"{f' --max-per-class {args.max_per_class}' if args.max_per_class else ''}\n")
    print(f"| path | one phase-2 epoch, {n_train} training images (s) | training images per epoch-second |")
    print("|---|---:|---:|")
    for name, seconds in (("cached activations", cached), ("end to end", end_to_end)):
        print(f"| {name} | {seconds:.1f} | {n_train / seconds:.0f} |")
    print(f"\nspeed-up of the cached path: {end_to_end / cached:.1f}x")


if __name__ == "__main__":
    main()

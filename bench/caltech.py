"""End-to-end Caltech-101/97 (the notebook's task): cold (empty cache) and warm (cached features) runs.

    .venv/bin/python bench/caltech.py [--strategy extract] [--backbone NAME] [-- extra train flags]

Each run is the real CLI, `transferlab train`, in a subprocess; wall time includes start-up and imports.
97 classes (BACKGROUND_Google, Motorbikes, airplanes, Faces_easy, Faces excluded), 70/15/15 split, seed 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CALTECH_EXCLUDED, machine, require_caltech


def timed_train(data: Path, out: Path, cache: str, strategy: str, backbone: str | None, extra: list[str]) -> tuple[float, dict]:
    chosen = ["--backbone", backbone] if backbone else []  # none: the strategy's default (small_cnn for scratch)
    command = [sys.executable, "-m", "transferlab", "--quiet", "train", str(data), "--exclude", CALTECH_EXCLUDED,
               "--strategy", strategy, *chosen, "--seed", "0", "--out", str(out), *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TRANSFERLAB_CACHE": cache})
    seconds = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    with (out / "history.csv").open() as rows:  # the learning curve, for slow learners such as scratch
        metrics["val_accuracy_by_epoch"] = " ".join(f"{float(row['val_accuracy']):.3f}" for row in csv.DictReader(rows))
    if (out / "auto.json").exists():  # --strategy auto: every candidate, and why the chosen one
        metrics["auto"] = json.loads((out / "auto.json").read_text())
    return seconds, metrics


def print_auto_candidates(record: dict) -> None:
    print(f"\nauto chose {record['chosen']}: {record['why']}\n")
    print("| candidate | status | estimated (s) | wall time (s) | validation accuracy | test accuracy | reason |")
    print("|---|---|---|---|---|---|---|")
    for c in record["candidates"]:
        accuracy = [f"{c[k]:.2%}" if c[k] is not None else "" for k in ("val_accuracy", "test_accuracy")]
        print(f"| {c['label']} | {c['status']} | {c['estimated_seconds']:.0f} | {c['seconds'] or ''} | "
              f"{accuracy[0]} | {accuracy[1]} | {c['reason']} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="extract")
    parser.add_argument("--backbone", default=None, help="default: efficientnet_lite0, small_cnn for scratch")
    parser.add_argument("--no-warm", action="store_true", help="only the cold run")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    data = require_caltech()
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
        cold_s, cold = timed_train(data, Path(runs) / "cold", cache, args.strategy, args.backbone, extra)
        runs_done = [("cold (empty cache)", cold_s, cold)]
        if not args.no_warm:
            warm_s, warm = timed_train(data, Path(runs) / "warm", cache, args.strategy, args.backbone, extra)
            runs_done.append(("warm (cached features)", warm_s, warm))
    print(f"machine: {machine()}")
    print(f"command: transferlab train CALTECH --exclude {CALTECH_EXCLUDED} --strategy {args.strategy} "
          f"{'--backbone ' + args.backbone + ' ' if args.backbone else ''}--seed 0 {' '.join(extra)}\n")
    print("| run | test accuracy | without TTA | top-5 | wall time (s) | extraction (s) | training (s) | n train/val/test |")
    print("|---|---|---|---|---|---|---|---|")
    for name, seconds, m in runs_done:
        no_tta = f"{m['test_accuracy_no_tta']:.2%}" if "test_accuracy_no_tta" in m else "(no TTA)"
        print(f"| {name} | {m['test_accuracy']:.2%} | {no_tta} | {m['top5_accuracy']:.2%} | {seconds:.1f} | "
              f"{m['extract_seconds']:.1f} | {m['train_seconds']:.1f} | {m['n_train']}/{m['n_val']}/{m['n_test']} |")
    for key in ("views", "augment_key", "finetune_path", "finetune_improved", "phase1_epochs", "epochs_run",
                "val_accuracy_by_epoch"):
        if key in runs_done[0][2]:
            print(f"\n{key}: {runs_done[0][2][key]}", end="")
    print()
    if "auto" in runs_done[0][2]:
        print_auto_candidates(runs_done[0][2]["auto"])


if __name__ == "__main__":
    main()

"""Caltech-101/97 with each embedded backbone and their combinations, on one shared feature cache.

    .venv/bin/python bench/backbones.py [--backbones a,b,c] [--combinations a+b,a+b+c] [--tta N] [-- extra train flags]

Single backbones run first on an empty cache, so their wall time is cold (start-up, extraction, head, run
folder); a combination then reads every feature from the cache its parts filled, so its own run is warm and
its cold cost is the sum of its parts' extraction plus its own run. Each run is the real CLI in a subprocess.
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

from common import CALTECH_EXCLUDED, machine, require_caltech

EMBEDDED = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
COMBINATIONS = "efficientnet_lite0+efficientnet_lite2,efficientnet_lite0+efficientnet_lite1+efficientnet_lite2"


def train(data: Path, backbone: str, out: Path, cache: str, extra: list[str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "transferlab", "--quiet", "train", str(data), "--exclude", CALTECH_EXCLUDED,
               "--backbone", backbone, "--seed", "0", "--out", str(out), *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "TRANSFERLAB_CACHE": cache})
    return time.perf_counter() - start, json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbones", default=EMBEDDED)
    parser.add_argument("--combinations", default=COMBINATIONS)
    parser.add_argument("--cache", default=None, help="reuse this cache folder (default: a fresh temporary one)")
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    data = require_caltech()
    rows, extraction = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache or tmp
        for backbone in [*args.backbones.split(","), *args.combinations.split(",")]:
            seconds, metrics = train(data, backbone, Path(tmp) / backbone.replace("+", "_"), cache, extra)
            parts = backbone.split("+")
            if len(parts) == 1:
                extraction[backbone] = metrics["extract_seconds"]
            cold = seconds + sum(extraction.get(p, 0.0) for p in parts) if len(parts) > 1 else seconds
            rows.append((backbone, metrics, seconds, cold))
    print(f"machine: {machine()}")
    print(f"command: transferlab train CALTECH --exclude {CALTECH_EXCLUDED} --backbone B --seed 0 {' '.join(extra)}\n")
    print("| backbone | test accuracy | validation accuracy | top-5 | run wall time (s) | cold wall time (s) | extraction (s) |")
    print("|---|---|---|---|---|---|---|")
    for backbone, m, seconds, cold in rows:
        print(f"| {backbone} | {m['test_accuracy']:.2%} | {m['val_accuracy']:.2%} | {m['top5_accuracy']:.2%} | "
              f"{seconds:.1f} | {cold:.1f} | {m['extract_seconds']:.1f} |")


if __name__ == "__main__":
    main()

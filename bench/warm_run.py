"""Warm reruns of `transferlab train` on Caltech-101/97: every feature is cached, so the run is start-up,
imports, the head, the run folder and the report.

    .venv/bin/python bench/warm_run.py [--repeats 5] [--src OTHER/src ...] [--warm-cache DIR]
                                       [--src-warm-cache DIR ...]

Each `--src` is another checkout's src folder (e.g. a `git worktree` of an older commit); the runs of all
sources are interleaved (A B A B ...) so that the machine's drift hits them alike. The cache is warmed once
per source first (a cold run, not timed here: see bench/caltech.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CALTECH_EXCLUDED, machine, require_caltech

HERE_SRC = Path(__file__).resolve().parents[1] / "src"


def run(src: Path, data: Path, cache: str, out: Path) -> float:
    command = [sys.executable, "-m", "transferlab", "--quiet", "train", str(data), "--exclude", CALTECH_EXCLUDED,
               "--seed", "0", "--out", str(out)]
    env = {**os.environ, "TRANSFERLAB_CACHE": cache, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--src", type=Path, action="append", default=[], help="another checkout's src folder")
    parser.add_argument("--warm-cache", help="a cache this checkout has already warmed (skips its cold warm-up)")
    parser.add_argument("--src-warm-cache", action="append", default=[],
                        help="a warmed cache for each --src, in the same order (a copy: each source keeps its own)")
    args = parser.parse_args()
    data = require_caltech()
    sources = [HERE_SRC, *args.src]
    times: dict[Path, list[float]] = {src: [] for src in sources}
    with tempfile.TemporaryDirectory() as tmp:
        caches = {src: tempfile.mkdtemp(dir=tmp) for src in sources}
        warmed = {HERE_SRC: args.warm_cache, **dict(zip(args.src, args.src_warm_cache))}
        caches.update({src: cache for src, cache in warmed.items() if cache})
        for i, src in enumerate(sources):
            if not warmed.get(src):
                run(src, data, caches[src], Path(tmp) / f"warm-up-{i}")
        for repeat in range(args.repeats):
            for i, src in enumerate(sources):
                times[src].append(run(src, data, caches[src], Path(tmp) / f"run-{repeat}-{i}"))
    print(f"machine: {machine()}")
    print(f"command: transferlab --quiet train CALTECH --exclude {CALTECH_EXCLUDED} --seed 0 (features cached), "
          f"{args.repeats} interleaved runs per source\n")
    print("| source | median (s) | min (s) | max (s) | runs (s, in order) |")
    print("|---|---|---|---|---|")
    for src, values in times.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {src} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} | {shown} |")


if __name__ == "__main__":
    main()

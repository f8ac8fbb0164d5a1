"""`auto` on Caltech-101/97 with the default budget: its wall time, and how its choice compares on the test split
with the best of the candidates it scored (issue 23's target: within 0.3 points, on each of three seeds).

    .venv/bin/python bench/auto_choice.py [--seeds 0 1 2] [-- extra train flags]

Each auto run is the real CLI in a subprocess (wall time includes start-up), on the feature cache of the
environment (TRANSFERLAB_CACHE or the user cache: warm runs reuse features, as a user's second run does). The
test accuracy of a candidate that was only cross-validated is measured afterwards, for this report alone, by
training it as its own run on the same split.csv: auto's choice never sees it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import CALTECH_EXCLUDED, machine, require_caltech

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import transferlab  # noqa: E402


def run_auto(data: Path, out: Path, seed: int, extra: list[str]) -> tuple[float, dict]:
    command = [sys.executable, "-m", "transferlab", "--quiet", "train", str(data), "--exclude", CALTECH_EXCLUDED,
               "--strategy", "auto", "--seed", str(seed), "--out", str(out), *extra]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started, json.loads((out / "auto.json").read_text())


def test_accuracy(data: Path, out: Path, candidate: dict, seed: int) -> float:
    """The candidate's test accuracy: auto's own run when it trained one, else a run on the same split."""
    if candidate["test_accuracy"] is not None:
        return candidate["test_accuracy"]
    head = "linear" if candidate["label"].endswith("-linear") else "mlp"
    run = transferlab.train(data, strategy=candidate["strategy"], backbone=candidate["backbone"], head=head,
                            split={"split_csv": out / "split.csv"}, seed=seed, out=out / "bench" / candidate["label"],
                            quiet=True)
    return run.metrics["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args, extra = parser.parse_known_args()
    extra = [e for e in extra if e != "--"]
    data = require_caltech()
    print(f"machine: {machine()}")
    print(f"command: transferlab train CALTECH --exclude {CALTECH_EXCLUDED} --strategy auto --seed S "
          f"{' '.join(extra)}\n")
    summary = []
    with tempfile.TemporaryDirectory() as runs:
        for seed in args.seeds:
            out = Path(runs) / f"seed{seed}"
            seconds, record = run_auto(data, out, seed, extra)
            scored = [c for c in record["candidates"] if c["status"] != "skipped"]
            tested = {c["label"]: test_accuracy(data, out, c, seed) for c in scored}
            print(f"seed {seed}: {seconds:.0f} s wall, budget {record['budget_seconds']:.0f} s, "
                  f"throughput {record['throughput']}")
            print("| candidate | status | estimated (s) | seconds | cv accuracy | validation | test |")
            print("|---|---|---|---|---|---|---|")
            for c in record["candidates"]:
                cv = f"{c['cv_accuracy']:.2%} ± {c['cv_std']:.2%}" if c["cv_accuracy"] is not None else ""
                val = f"{c['val_accuracy']:.2%}" if c["val_accuracy"] is not None else ""
                test = f"{tested[c['label']]:.2%}" if c["label"] in tested else ""
                chosen = " (**chosen**)" if c["label"] == record["chosen"] else ""
                print(f"| {c['label']}{chosen} | {c['status']} | {c['estimated_seconds']:.0f} | "
                      f"{c['seconds'] or ''} | {cv} | {val} | {test} |")
            best = max(tested.values())
            summary.append((seed, seconds, record["chosen"], tested[record["chosen"]], best))
            print()
    print("| seed | wall (s) | chosen | its test accuracy | best candidate's | gap (points) |")
    print("|---|---|---|---|---|---|")
    for seed, seconds, chosen, mine, best in summary:
        print(f"| {seed} | {seconds:.0f} | {chosen} | {mine:.2%} | {best:.2%} | {100 * (best - mine):.2f} |")


if __name__ == "__main__":
    main()

"""End-to-end training throughput before and after the decode-once store and batched augmentation (issue 23).

    python3 bench/pipeline_cpu.py --before /work/main/src [--per-class 40] [--repeats 2]

Trains `finetune --unfreeze all --end-to-end` (efficientnet_lite0, whole network) and `scratch` (default recipe)
on the first `per-class` hymenoptera training photos of each class, alternating the code under --before (e.g. the
main branch's src) and this checkout's src (old, new, old, new), each in a fresh process with a cold cache.
Reports training images/s (images through training over the training loop's seconds: decoding is outside it on
both sides) and the wall seconds of the whole `train` call, as median and range over the repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import SHARED, machine

HERE = Path(__file__).resolve().parents[1] / "src"
RUN = """
import json, sys, time, transferlab
strategy, data, out, epochs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
extra = {"finetune": {"unfreeze": "all", "end_to_end": True, "epochs": epochs}} if strategy == "finetune" else {}
start = time.perf_counter()
metrics = transferlab.train(data, strategy=strategy, out=out, device="cpu", seed=0, quiet=True, epochs=epochs,
                            **extra).metrics
print(json.dumps({"wall": time.perf_counter() - start, "train_seconds": metrics["train_seconds"],
                  "images": metrics["n_train"] * metrics["epochs_run"]}))
"""


def one_run(src: Path, strategy: str, data: Path, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(src), "TRANSFERLAB_CACHE": str(Path(tmp) / "cache")}
        out = subprocess.run([sys.executable, "-c", RUN, strategy, str(data), str(Path(tmp) / "run"), str(epochs)],
                             env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["rate"] = result["images"] / result["train_seconds"]
    return result


def link_photos(root: Path, per_class: int) -> Path:
    for cls in ("ants", "bees"):
        (root / cls).mkdir(parents=True)
        for photo in sorted((SHARED / "datasets" / "hymenoptera" / "train" / cls).glob("*.jpg"))[:per_class]:
            (root / cls / photo.name).symlink_to(photo)
    return root


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the src folder of the code to compare with")
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    lines = [f"machine: {machine()}", f"command: bench/pipeline_cpu.py {' '.join(sys.argv[1:])}", "",
             "| strategy | code | training images/s | wall s of train() |", "|---|---|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        data = link_photos(Path(tmp) / "photos", args.per_class)
        for strategy in ("finetune", "scratch"):
            results = {"before": [], "after": []}
            for _ in range(args.repeats):
                for side, src in (("before", args.before), ("after", HERE)):
                    results[side].append(one_run(src, strategy, data, args.epochs))
                    print(strategy, side, results[side][-1], flush=True)
            for side, runs in results.items():
                lines.append(f"| {strategy} | {side} | {spread([r['rate'] for r in runs])} | "
                             f"{spread([r['wall'] for r in runs])} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

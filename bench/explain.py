"""Grad-CAM: seconds per explanation and the pointing game.

    .venv/bin/python bench/explain.py [--train-per-class 30] [--test-per-class 20]

Trains efficientnet_lite0 (extract) on the pointing game's generated set (tests/pointing_game.py: the class is a
textured 64 px patch at a random known place on clutter every class shares), explains held-out images (224 px) in
batches, and prints seconds per explanation (cold: the first call, which builds the explainer; warm: again) and the
share of heatmap maxima inside the patch's box (chance: 8%).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from common import machine  # noqa: E402
from pointing_game import pointing_hits, write_pointing_game  # noqa: E402

import transferlab  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-per-class", type=int, default=30)
    parser.add_argument("--test-per-class", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        write_pointing_game(root / "train", args.train_per_class, seed=0)
        boxes = write_pointing_game(root / "test", args.test_per_class, seed=1)
        classifier = transferlab.train(root / "train", out=root / "run", epochs=15, lr=3e-3, quiet=True)
        paths = list(boxes)
        seconds = []
        for _ in range(2):
            start = time.perf_counter()
            explanations = classifier.explain(paths)
            seconds.append((time.perf_counter() - start) / len(paths))
        hits = pointing_hits(explanations, list(boxes.values()))
        correct = np.mean([e.predicted == p.parent.name for e, p in zip(explanations, paths)])
    print(f"machine: {machine()}")
    print(f"seconds per explanation: cold {seconds[0]:.3f}, warm {seconds[1]:.3f} ({len(paths)} images, 224 px)")
    print(f"pointing game: {np.mean(hits):.1%} of {len(hits)} maxima inside the box (chance 8%); "
          f"predictions correct: {correct:.1%}")


if __name__ == "__main__":
    main()

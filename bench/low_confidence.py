"""How well the low-confidence / out-of-distribution check works on real data.

    python bench/low_confidence.py [DATA] [--strategy extract] [--out runs/bench-low-confidence]

Trains on DATA (default ../shared/datasets/hymenoptera, ants vs bees), then predicts the photos that ship with
scikit-image (a cat, an astronaut, coffee, a rocket, ...: nothing like the training images) and prints, for
each, the answer and whether it was flagged; plus the share of validation and test images flagged (the false
alarms). Numbers are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

import transferlab

SHARED = Path(__file__).resolve().parents[2] / "shared"
PHOTOS = ("chelsea", "cat", "astronaut", "coffee", "rocket", "camera", "brick", "grass", "moon", "page", "text",
          "hubble_deep_field", "immunohistochemistry", "coins", "horse", "clock")


def out_of_domain_photos(folder: Path) -> list[Path]:
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in PHOTOS:
        if hasattr(skimage.data, name):
            pixels = np.asarray(getattr(skimage.data, name)())
            Image.fromarray(pixels).convert("RGB").save(folder / f"{name}.png")
            paths.append(folder / f"{name}.png")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(SHARED / "datasets" / "hymenoptera"))
    parser.add_argument("--strategy", default="extract")
    parser.add_argument("--out", default="runs/bench-low-confidence")
    args = parser.parse_args()
    out = Path(args.out)
    classifier = transferlab.train(args.data, strategy=args.strategy, out=out / "run", overwrite=True, quiet=True)
    print(json.dumps(classifier.metrics["low_confidence"], indent=2))
    predictions = transferlab.load(out / "run").predict(out_of_domain_photos(out / "photos"), top_k=1)
    print(f"out-of-domain photos flagged: {sum(bool(p.low_confidence) for p in predictions)}/{len(predictions)}")
    for p in predictions:
        label, probability = p.top[0]
        flag = f"flagged: {p.low_confidence_reason}" if p.low_confidence else "NOT flagged"
        print(f"  {Path(p.source).stem:22s} {label} {probability:.1%}  {flag}")


if __name__ == "__main__":
    main()

"""`make demo`: a real data set that ships inside a dependency -> a trained, evaluated classifier.

1. Writes scikit-learn's handwritten digits (1797 images, 10 classes) as PNG files in class folders.
2. `transferlab train` on them by feature extraction with the embedded EfficientNet-Lite0.
3. `transferlab predict` on a few of the images, and `transferlab imagenet` on scikit-image's photos.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data as skdata
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo_data"
RUN = ROOT / "runs" / "demo-digits"


def write_digits(folder: Path) -> int:
    """Each 8x8 digit (values 0-16) becomes a 64x64 grayscale PNG, white ink on black."""
    digits = load_digits()
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        path = folder / str(target) / f"digit_{i:04d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((64, 64), Image.Resampling.BICUBIC)
            image.save(path)
    return len(digits.images)


def write_photos(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        path = folder / f"{name}.jpg"
        if not path.exists():
            Image.fromarray(getattr(skdata, name)()).convert("RGB").save(path, quality=92)
        paths.append(path)
    return paths


def transferlab(*args: str) -> None:
    print(f"\n$ transferlab {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "transferlab", *args], check=True)


def main() -> None:
    n = write_digits(DEMO / "digits")
    print(f"wrote {n} digit images to {DEMO / 'digits'}")
    out = RUN
    transferlab("train", str(DEMO / "digits"), "--out", str(out), "--overwrite", "--epochs", "40")  # make demo reruns
    samples = sorted((DEMO / "digits").glob("*/digit_000*.png"))[:4]
    transferlab("predict", str(out), *map(str, samples))
    transferlab("imagenet", *map(str, write_photos(DEMO / "photos")), "--top-k", "3")
    print(f"\nDone. Run folder: {out}\n  plots: {out / 'accuracy.png'}, {out / 'loss.png'}, {out / 'confusion_matrix.png'}")


if __name__ == "__main__":
    main()

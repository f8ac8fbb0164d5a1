"""What `transferlab doctor` reads from the pixels themselves: each image's size, whether it is grey, and a small
RGB thumbnail of the whole image (what `same_picture` compares); the set-level checks built on those facts; and
`read_skip_file`, which turns doctor's findings.csv into the files `train --skip` leaves out.
"""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from transferlab.core.errors import TransferlabError
from transferlab.data.decoding import ImageDecodeError, open_image, opened

SIDE = 32  # facts keep a SIDE x SIDE RGB thumbnail of the whole image, squashed (what same_picture compares)
THUMBNAIL_PX = 64  # JPEGs are decoded at 1/8 scale or so: the thumbnail and the greyness need no more
TINY_PX = 64  # shorter side below this: smaller than a third of the networks' 224 px input
ODD_ASPECT = 2.5  # long side over short side beyond this: the centre crop loses most of the picture
GREY_SPREAD = 4.0  # mean |R-G|, |G-B| below this on the thumbnail: a grey picture, whatever its mode
IMBALANCE_RATIO = 5.0  # largest class over smallest beyond this
MIN_PER_CLASS = 10  # fewer images than this in a class: its validation and test shares are one or two images
FINDINGS = "findings.csv"
SKIPPED_KINDS = ("label", "conflict", "leak", "duplicate", "outlier")  # rows of findings.csv naming a file to skip


@dataclass(frozen=True)
class ImageFacts:
    """One image as doctor sees it: its size, greyness and a SIDE x SIDE RGB thumbnail of the whole image."""

    width: int
    height: int
    grey: bool
    thumbnail: np.ndarray  # [SIDE, SIDE, 3] uint8, squashed to a square

    def packed(self) -> np.ndarray:
        """The facts as one uint8 vector (the facts cache stores vectors): width, height (4 bytes each), grey,
        the thumbnail's pixels."""
        size = np.array([self.width, self.height], dtype="<u4").view(np.uint8)
        return np.concatenate([size, [int(self.grey)], self.thumbnail.ravel()]).astype(np.uint8)

    @classmethod
    def unpacked(cls, vector: np.ndarray) -> ImageFacts:
        width, height = (int(v) for v in np.ascontiguousarray(vector[:8]).view("<u4"))
        return cls(width, height, bool(vector[8]), np.asarray(vector[9:]).reshape(SIDE, SIDE, 3))


def image_facts(path: Path) -> ImageFacts:
    with opened(path) as header:
        width, height = header.size
    rgb = open_image(path, draft_size=(THUMBNAIL_PX, THUMBNAIL_PX))
    rgb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    pixels = np.asarray(rgb, dtype=np.float32)
    spread = np.abs(pixels[..., 0] - pixels[..., 1]).mean() + np.abs(pixels[..., 1] - pixels[..., 2]).mean()
    thumbnail = np.asarray(rgb.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.uint8)
    return ImageFacts(width, height, bool(spread / 2 < GREY_SPREAD), thumbnail)


def facts_of(paths: Sequence[Path], threads: int = 4) -> list[ImageFacts | None]:
    """ImageFacts per path (None where it does not decode), decoded in threads (PIL releases the GIL)."""
    def safe(path: Path) -> ImageFacts | None:
        try:
            return image_facts(path)
        except ImageDecodeError:
            return None

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(safe, paths))


def set_checks(facts: Sequence[ImageFacts], labels: np.ndarray, classes: Sequence[str], paths: Sequence[str],
               fractions: Sequence[float]) -> list[str]:
    """Plain sentences about the set as a whole: class imbalance, tiny images, grey among colour (or the other
    way round), odd aspect ratios, classes too small for the split asked."""
    notes = []
    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() > 0 and counts.max() / counts.min() > IMBALANCE_RATIO:
        notes.append(f"class imbalance: {classes[counts.argmax()]} has {counts.max()} images, "
                     f"{classes[counts.argmin()]} {counts.min()} ({counts.max() / counts.min():.0f}x); "
                     "consider class_weight='balanced' or --max-per-class")
    short = np.array([min(f.width, f.height) for f in facts])
    aspect = np.array([max(f.width, f.height) / max(1, min(f.width, f.height)) for f in facts])
    grey = np.array([f.grey for f in facts])
    for mask, what in ((short < TINY_PX, f"tiny images (shorter side under {TINY_PX} px)"),
                       (aspect > ODD_ASPECT, f"odd aspect ratios (over {ODD_ASPECT}:1; the centre crop cuts most of them)")):
        if mask.any():
            notes.append(f"{mask.sum()} {what}, e.g. {', '.join(np.asarray(paths)[mask][:3])}")
    minority = min(grey.sum(), (~grey).sum())
    if 0 < minority:
        which = "grey" if grey.sum() == minority else "colour"
        per_class = Counter(classes[label] for label, g in zip(labels, grey) if g == (which == "grey"))
        notes.append(f"mixed grey and colour: {minority} {which} images, most in "
                     f"{', '.join(f'{name} ({n})' for name, n in per_class.most_common(3))}")
    held_out = min(f for f in fractions[1:] if f > 0) if any(f > 0 for f in fractions[1:]) else 1
    few = [cls for cls, n in zip(classes, counts) if n < MIN_PER_CLASS or n * held_out < 1]
    if few:
        notes.append(f"{len(few)} class(es) with fewer than {MIN_PER_CLASS} images, too few for a "
                     f"{'/'.join(f'{f:g}' for f in fractions)} split: {', '.join(few[:10])}")
    return notes


def read_skip_file(source: Path | str) -> dict[str, str]:
    """The files `train --skip` leaves out: relative path (or absolute) -> reason, from doctor's findings.csv or
    a doctor run folder holding one. Rows of set-level notes name no file and are ignored."""
    path = Path(source)
    path = path / FINDINGS if path.is_dir() else path
    if not path.is_file():
        raise TransferlabError(f"no findings file at {path}",
                               hint="pass the findings.csv (or the folder) written by `transferlab doctor DATA`")
    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if rows and not {"path", "kind"} <= set(rows[0]):
        raise TransferlabError(f"{path} has no path and kind columns", hint="pass the findings.csv of doctor")
    flagged: dict[str, str] = {}
    for row in rows:
        if row["path"] and row["kind"] in SKIPPED_KINDS:
            flagged.setdefault(row["path"], f"doctor: {row['kind']}")  # a file flagged twice: its first finding
    return flagged

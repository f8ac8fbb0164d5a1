"""The pointing game's data: the class is decided by one object (its texture: checks, stripes or rings) at a random known place on
a cluttered background that every class shares, so a heatmap that points anywhere but the object is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIDE = 256  # efficientnet_lite0 resizes to 256 and centre-crops 224: the object stays inside the crop
MARGIN = 16  # (256 - 224) / 2
OBJECT = 64
CLASSES = ("checks", "stripes", "rings")
PALETTE = ((220, 40, 40), (40, 80, 220), (40, 170, 60), (230, 200, 40), (20, 20, 20), (240, 240, 240))


def textured_patch(rng: np.random.Generator, pattern: str) -> Image.Image:
    """An OBJECT-sized patch of two random palette colours in the class's pattern: the evidence fills the box
    (a flat shape's evidence is its edges, which a 7x7 map places beside it)."""
    first, second = rng.choice(len(PALETTE), 2, replace=False)
    y, x = np.mgrid[:OBJECT, :OBJECT]
    if pattern == "checks":
        mask = (x // 8 + y // 8) % 2 == 0
    elif pattern == "stripes":
        mask = (y // 6) % 2 == 0
    else:
        mask = (np.hypot(x - OBJECT / 2, y - OBJECT / 2) // 6) % 2 == 0
    pixels = np.where(mask[..., None], np.array(PALETTE[first]), np.array(PALETTE[second])).astype(np.uint8)
    return Image.fromarray(pixels)


def cluttered_image(rng: np.random.Generator, pattern: str) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """(the image, the object's box in the 224 px crop the network sees: x0, y0, x1, y1)."""
    pixels = np.clip(rng.normal(128, 40, (SIDE // 8, SIDE // 8, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    draw = ImageDraw.Draw(image)
    for _ in range(40):  # small discs, boxes and strokes of random colours, everywhere, in every class
        x, y = (int(v) for v in rng.integers(0, SIDE, 2))
        size = int(rng.integers(6, 18))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.25:
            draw.ellipse((x, y, x + size, y + size), fill=colour)
        elif rng.random() < 0.33:
            draw.rectangle((x, y, x + size, y + size), fill=colour)
        else:
            draw.line((x, y, *(int(v) for v in rng.integers(0, SIDE, 2))), fill=colour, width=2)
    x, y = (int(v) for v in rng.integers(MARGIN, SIDE - MARGIN - OBJECT, 2))
    image.paste(textured_patch(rng, pattern), (x, y))
    return image, (x - MARGIN, y - MARGIN, x + OBJECT - MARGIN, y + OBJECT - MARGIN)


def write_pointing_game(root: Path, per_class: int, seed: int) -> dict[Path, tuple[int, int, int, int]]:
    """Class folders of generated JPEGs under `root`; {path: the object's box in the network's crop}."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for pattern in CLASSES:
        (root / pattern).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, box = cluttered_image(rng, pattern)
            path = root / pattern / f"{pattern}_{i:03d}.jpg"
            image.save(path, quality=92)
            boxes[path] = box
    return boxes


def pointing_hits(explanations, boxes: list[tuple[int, int, int, int]]) -> list[bool]:
    """Whether each heatmap's maximum falls inside its object's box."""
    hits = []
    for explanation, (x0, y0, x1, y1) in zip(explanations, boxes):
        y, x = np.unravel_index(int(np.argmax(explanation.heatmap)), explanation.heatmap.shape)
        hits.append(bool(x0 <= x < x1 and y0 <= y < y1))
    return hits

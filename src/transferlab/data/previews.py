"""Pictures of what an augmentation does: a grid of variants, the variants as files (Keras' save_to_dir /
save_prefix / save_format), and featurewise standardisation / ZCA made visible."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from transferlab.core.errors import TransferlabError
from transferlab.data.augment import (
    AugmentConfig,
    FeaturewiseStandardizer,
    augment_image,
)
from transferlab.data.batch_augment import augment_batch
from transferlab.data.decoding import ImageDecodeError, open_image, resize_and_crop
from transferlab.data.layouts import image_files

# Preview tiles are shrunk to fit this box (never enlarged) and get a label strip of this height beneath.
PREVIEW_TILE = 256
PREVIEW_LABEL_HEIGHT = 16
# Previews show what end-to-end training sees with the default backbone (efficientnet_lite0): the image decoded
# once at its resize size, then batch-augmented to its input size.
PREVIEW_STORED, PREVIEW_INPUT, PREVIEW_INTERPOLATION = 256, 224, "bicubic"
# files that mark a run or compare folder: its first "image" would be a plot (accuracy.png), not a photo
RUN_MARKERS = ("model.json", "metrics.json", "history.csv", "compare.csv")


def preview_source(source: Path) -> tuple[Path, Image.Image]:
    """The photo to preview: `source` itself, or the first image of a folder of photos, decoded as training
    decodes it. A run folder or a file that is not an image is a clear error rather than a preview of a plot."""
    source = Path(source)
    if source.is_dir() and any((source / marker).is_file() for marker in RUN_MARKERS):
        raise TransferlabError(
            f"{source} is a run folder, not a photo: augment-preview would augment its plots",
            hint="pass one of your training images, or the folder that holds them",
        )
    path = image_files([source])[0]
    try:
        return path, open_image(path)
    except ImageDecodeError as exc:
        raise TransferlabError(f"cannot preview {path}: {exc.message}",
                               hint=exc.hint or "pass a JPEG, PNG or other image file, or a folder of them") from None


def preview_grid(
    image: Image.Image, config: AugmentConfig, n: int = 8, seed: int = 0, path: Path | str | None = None
) -> Image.Image:
    """The original (labelled "original") then n variants (seeds seed .. seed+n-1) on a near-square grid.

    The grid has ceil(sqrt(n + 1)) columns; each cell is the image shrunk to fit PREVIEW_TILE x PREVIEW_TILE
    plus a PREVIEW_LABEL_HEIGHT label strip. Saved as PNG to `path` when given.
    """
    labelled = preview_variants(image, config, n, seed)
    columns = math.ceil(math.sqrt(len(labelled)))
    rows = math.ceil(len(labelled) / columns)
    tile_w, tile_h = _thumbnail(labelled[0][1]).size  # every tile is a training input of one size
    cell_h = tile_h + PREVIEW_LABEL_HEIGHT
    grid = Image.new("RGB", (columns * tile_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    for index, (label, variant) in enumerate(labelled):
        x, y = index % columns * tile_w, index // columns * cell_h
        grid.paste(_thumbnail(variant), (x, y))
        draw.text((x + 2, y + tile_h + 2), label, fill="black")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        grid.save(path, format="PNG")
    return grid


def preview_variants(image: Image.Image, config: AugmentConfig, n: int = 8, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """("original", the unaugmented input) then ("seed s", variant) for seeds seed .. seed+n-1: what training sees
    (data.batch_augment on the decoded image, each variant drawn from torch.Generator().manual_seed(s))."""
    _check_count(n)
    labelled = [("original", training_view(image, AugmentConfig.none(), seed))]
    return labelled + [(f"seed {seed + i}", training_view(image, config, seed + i)) for i in range(n)]


def training_view(image: Image.Image, config: AugmentConfig, seed: int) -> Image.Image:
    """One augmented input as the end-to-end paths make it: stored at PREVIEW_STORED, augmented in a batch (of
    one) to PREVIEW_INPUT, with the random draws of a generator seeded with `seed`."""
    stored = resize_and_crop(image, PREVIEW_STORED, PREVIEW_STORED, PREVIEW_INTERPOLATION)
    pixels = torch.from_numpy(stored.copy()).permute(2, 0, 1)[None]
    view = augment_batch(pixels, config, PREVIEW_INPUT, torch.Generator().manual_seed(seed))[0]
    return Image.fromarray(view.permute(1, 2, 0).numpy())


def featurewise_preview(images: list[Image.Image], config: AugmentConfig, size: int = 32) -> list[Image.Image]:
    """What featurewise centering / std normalisation / ZCA whitening do to `images`: the standardizer is fitted
    on them (resized to size x size, small enough for ZCA) and each result is stretched to 0..255 to be seen,
    as the Keras lessons show whitened CIFAR images."""
    standardizer = FeaturewiseStandardizer.from_config(config)
    if not (standardizer.center or standardizer.std_normalization or standardizer.zca_whitening):
        raise TransferlabError(
            "the augmentation has no featurewise option to preview",
            hint="set featurewise_center, featurewise_std_normalization or zca_whitening",
        )
    batch = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)) for im in images]) / 255.0
    out = standardizer.fit(batch).transform(batch)
    low = out.min(axis=(1, 2, 3), keepdims=True)
    span = np.maximum(out.max(axis=(1, 2, 3), keepdims=True) - low, 1e-12)
    return [Image.fromarray(im) for im in ((out - low) / span * 255).round().astype(np.uint8)]


def save_augmented(
    image: Image.Image,
    config: AugmentConfig,
    n: int,
    out_dir: Path | str,
    prefix: str = "aug",
    format: str = "jpeg",
    seed: int = 0,
) -> list[Path]:
    """Write n variants as `{prefix}_{index}_{seed}.{format}` (Keras' save_to_dir/save_prefix/save_format)."""
    _check_count(n)
    pil_format = Image.registered_extensions().get(f".{format.lower()}")
    if pil_format is None:
        raise TransferlabError(f"unknown image format {format!r}", hint="use jpeg or png")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}_{i}_{seed + i}.{format.lower()}" for i in range(n)]
    for i, path in enumerate(paths):
        augment_image(image, config, seed + i).save(path, format=pil_format)
    return paths


def _thumbnail(image: Image.Image) -> Image.Image:
    tile = image.convert("RGB")
    tile.thumbnail((PREVIEW_TILE, PREVIEW_TILE))
    return tile


def _check_count(n: int) -> None:
    if n < 1:
        raise TransferlabError(f"number of augmented images must be at least 1, got {n}", hint="pass n >= 1")

"""Image decoding, the one way every path reads an image: training, torch and ONNX prediction, serving, reports.

PIL and numpy only (no torch, no scikit-learn), so that the ONNX predictor and the server stay light. An image
is decoded fully to RGB with its EXIF orientation applied; 16-bit, 32-bit and float images are scaled (not
clipped) to 0..255, transparency is composited over white, and images too large or too elongated to resize
safely are refused with an ImageDecodeError. `resize_and_crop` then gives the model's uint8 input.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from transferlab.core.errors import TransferlabError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

MAX_IMAGE_PIXELS = 120_000_000
MAX_ASPECT_RATIO = 100  # resizing the shorter side of a 1 x 100000 image to 256 px would need gigabytes
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS  # PIL warns above this and refuses above twice this; we refuse above it

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


class ImageDecodeError(TransferlabError):
    """An image file that cannot be decoded; `.message` is a short reason such as "truncated image"."""

    def __init__(self, reason: str):
        super().__init__(reason, hint="check that the file opens in an image viewer; re-save it as JPEG or PNG")


def open_image(source: Path | str | bytes, draft_size: tuple[int, int] | None = None, *,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image fully to RGB with its EXIF orientation applied; raise ImageDecodeError if unusable.

    draft_size (width, height) lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale, never below that size.
    max_pixels refuses larger images from their header, before any pixel is decoded (the server sets it lower).
    """
    with opened(source, max_pixels) as image:
        if draft_size is not None and image.format == "JPEG":
            if image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8):
                draft_size = (draft_size[1], draft_size[0])  # the stored image is rotated by 90 degrees
            image.draft("RGB", draft_size)
        image.load()
        return _to_rgb(ImageOps.exif_transpose(image))


@contextmanager
def opened(source: Path | str | bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Iterator[Image.Image]:
    """Image.open (reads the header only), with every failure inside the block turned into ImageDecodeError.
    Pillow's decompression-bomb warning becomes that error too, instead of a warning on the user's terminal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        with image:
            pixels = image.width * image.height
            if pixels > max_pixels:
                raise ImageDecodeError(f"image too large ({image.width}x{image.height} = {pixels:,} pixels, "
                                       f"limit {max_pixels:,})")
            if max(image.size) > MAX_ASPECT_RATIO * max(1, min(image.size)):
                raise ImageDecodeError(
                    f"image {image.width}x{image.height} is too elongated (aspect ratio over {MAX_ASPECT_RATIO})"
                )
            yield image
    except ImageDecodeError:
        raise
    except FileNotFoundError as exc:
        raise ImageDecodeError("file not found") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image (UnidentifiedImageError)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"image too large (over {MAX_IMAGE_PIXELS:,} pixels)") from exc
    except Exception as exc:  # decoders raise many exception types on malformed bytes; each means "unusable file"
        if "truncated" in str(exc).lower():
            raise ImageDecodeError("truncated image") from exc
        raise ImageDecodeError(f"corrupt image ({type(exc).__name__}: {exc})"[:160]) from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        return Image.fromarray(_to_uint8(np.asarray(image), image.mode)).convert("RGB")
    if image.has_transparency_data:
        white = Image.new("RGBA", image.size, "white")
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Scale 16-bit, 32-bit or float pixels to 0..255 (PIL's own convert clips them instead of scaling)."""
    peak = float(values.max(initial=0))
    if mode == "F" and peak <= 1.0:
        full_scale = 1.0  # float images in 0..1
    elif mode.startswith("I;16") or peak > 255:
        full_scale = 65535.0  # 16-bit data, which PIL also opens as mode I
    else:
        full_scale = 255.0
    return np.clip(np.round(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def resize_and_crop(image: Image.Image, resize_size: int, input_size: int, interpolation: str) -> np.ndarray:
    """uint8 HxWx3: the shorter side resized to `resize_size`, then centre-cropped to `input_size`.

    Written with PIL (not torchvision) so that torch-free paths share it; the same sizes, rounding and resampling
    as torchvision's v2.Resize + CenterCrop on a PIL image, which call PIL's resize themselves.
    """
    image = image.convert("RGB")
    width, height = image.size
    size = (resize_size, int(resize_size * height / width)) if width <= height else (
        int(resize_size * width / height), resize_size)
    if (width, height) != size:
        image = image.resize(size, resample=RESAMPLING[interpolation])
    left = int(round((size[0] - input_size) / 2.0))
    top = int(round((size[1] - input_size) / 2.0))
    return np.asarray(image.crop((left, top, left + input_size, top + input_size)), dtype=np.uint8)

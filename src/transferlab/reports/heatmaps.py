"""Pictures of class-activation heatmaps: the overlay of a heatmap on its image, and the side-by-side panel
(original | overlay, with a caption) that `predict --explain`, report.html and the served page show.

Only numpy, Pillow and matplotlib's colour maps: it renders arrays a caller computed, so reports stay model-free.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

OVERLAY_ALPHA = 0.45  # heat over the image: strong enough to read, weak enough to see what lies under it
CAPTION_PX = 22


def heat_colours(heatmap: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 of a [0, 1] heatmap in the 'jet' colour map (the Keras lesson's; blue cold, red hot)."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """The heatmap's colours blended over the image (both HxW; the heatmap is resized to the image when not)."""
    colours = heat_colours(heatmap)
    if colours.shape[:2] != image.shape[:2]:
        colours = np.asarray(Image.fromarray(colours).resize(image.shape[1::-1], Image.Resampling.BILINEAR))
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return Image.fromarray(blended.round().astype(np.uint8))


def side_by_side(image: np.ndarray, heatmap: np.ndarray, caption: str) -> Image.Image:
    """Original | overlay, with `caption` (label and probability) on a white strip below."""
    height, width = image.shape[:2]
    panel = Image.new("RGB", (2 * width, height + CAPTION_PX), "white")
    panel.paste(Image.fromarray(image), (0, 0))
    panel.paste(overlay(image, heatmap), (width, 0))
    ImageDraw.Draw(panel).text((4, height + 5), caption, fill="black")
    return panel


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")

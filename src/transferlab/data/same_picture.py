"""Whether two images are the same picture, resized, re-encoded, cropped by up to 15% or mirrored, from small
RGB thumbnails of each whole image (`ImageFacts.thumbnail`), for `transferlab doctor`'s near-duplicates.

Two stages, on candidate pairs that feature similarity already found:
1. alignment: every window of one image (85-100% of its side, at a grid of places, as read and mirrored) is
   compared with the other image whole by the correlation of their grey pixels; the best window says how the
   two would line up if they were one picture;
2. colours: at the best of a finer grid of windows around that alignment, the mean absolute difference of the
   colours (0-1). Distinct pictures of one plain subject (two yin-yang symbols, two stop signs) align as well
   as copies do; their colours, backgrounds and strokes still differ, a re-encoded copy's do not.

Written here: scikit-image's `match_template` aligns one pair at one scale at a time (0.1 s a pair over the
scales and mirrors on Caltech-101, minutes for its thousands of candidate pairs); this compares all windows of
a batch of pairs at once with torchvision's `roi_align`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from transferlab.data.image_checks import SIDE

ALIGN_PX = 16  # side at which windows are aligned (grey)
COMPARE_PX = 24  # side at which aligned windows' colours are compared
PAIRS_AT_ONCE = 512  # pairs (and images) whose windows are held at once


def window_boxes(scales: tuple[float, ...], places: int) -> torch.Tensor:
    """[W, 4] boxes (x0, y0, x1, y1) in thumbnail pixels: the whole thumbnail, and for each smaller scale a
    places x places grid of positions from one corner to the other."""
    boxes = []
    for scale in scales:
        steps = np.linspace(0, 1, places) if scale < 1 else (0.0,)
        for y in steps:
            for x in steps:
                x0, y0 = x * (1 - scale) * SIDE, y * (1 - scale) * SIDE
                boxes.append((x0, y0, x0 + scale * SIDE, y0 + scale * SIDE))
    return torch.tensor(boxes, dtype=torch.float32)


COARSE = window_boxes((1.0, 0.95, 0.9, 0.85), 3)
FINE = window_boxes((1.0, 0.97, 0.94, 0.91, 0.88, 0.85), 5)


def same_picture_scores(thumbnails: np.ndarray, pairs: np.ndarray,
                        min_alignment: float) -> tuple[np.ndarray, np.ndarray]:
    """For each pair (i, j) of `thumbnails` ([n, SIDE, SIDE, 3] uint8): the best grey correlation of a window of
    one with the other whole (1: identical up to brightness and contrast), and, where that reaches
    `min_alignment`, the mean absolute colour difference (0-1) of the best-matching window (inf elsewhere)."""
    images = torch.from_numpy(np.ascontiguousarray(thumbnails)).permute(0, 3, 1, 2).float() / 255
    pairs = torch.as_tensor(np.asarray(pairs, dtype=np.int64).reshape(-1, 2))
    scores = _alignment_scores(images.mean(1, keepdim=True), pairs)  # [pairs, which gives the window, mirrored]
    alignment, best = scores.reshape(len(pairs), 4).max(1)
    larger, whole = pairs[torch.arange(len(pairs)), best // 2], pairs[torch.arange(len(pairs)), 1 - best // 2]
    difference = torch.full((len(pairs),), float("inf"))
    close = torch.nonzero(alignment >= min_alignment).flatten()
    for start in range(0, len(close), PAIRS_AT_ONCE):
        rows = close[start:start + PAIRS_AT_ONCE]
        difference[rows] = _colour_difference(images, larger[rows], whole[rows], best[rows] % 2 == 1)
    return alignment.numpy(), difference.numpy()


def _alignment_scores(grey: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """[pairs, 2, 2]: the best correlation of a COARSE window of pair[k] with pair[1 - k] whole, as read or
    mirrored. Mirroring the whole image instead of the windows gives the same maxima (the grid of windows is
    symmetric) at half the cost. The windows are cut once per image, a block of images at a time (memory stays
    bounded on large sets)."""
    scores = torch.full((len(pairs), 2, 2), -1.0)
    wholes = [_centred(_resized(grey, ALIGN_PX)), _centred(_resized(grey.flip(-1), ALIGN_PX))]
    used = torch.unique(pairs)
    for start in range(0, len(used), PAIRS_AT_ONCE):
        block = used[start:start + PAIRS_AT_ONCE]
        place = torch.full((len(grey),), -1, dtype=torch.long)
        place[block] = torch.arange(len(block))
        windows = _centred(_windows(grey[block], COARSE, ALIGN_PX))
        for k in (0, 1):
            rows = torch.nonzero(place[pairs[:, k]] >= 0).flatten()
            of_rows = windows[place[pairs[rows, k]]]
            for mirrored in (0, 1):
                whole = wholes[mirrored][pairs[rows, 1 - k]]
                scores[rows, k, mirrored] = torch.einsum("pwd,pd->pw", of_rows, whole).amax(1)
    return scores


def _colour_difference(images: torch.Tensor, larger: torch.Tensor, whole: torch.Tensor,
                       mirrored: torch.Tensor) -> torch.Tensor:
    """Mean absolute colour difference between `whole` (mirrored where asked) and the closest FINE window of
    `larger`."""
    target = images[whole]
    target[mirrored] = target[mirrored].flip(-1)
    windows = _windows(images[larger], FINE, COMPARE_PX)
    return (windows - _resized(target, COMPARE_PX)[:, None]).abs().mean(-1).amin(1)


def _windows(images: torch.Tensor, boxes: torch.Tensor, side: int) -> torch.Tensor:
    """[m, W, C * side * side]: every box of every image, resampled to side x side."""
    m, w = len(images), len(boxes)
    rois = torch.cat([torch.arange(m, dtype=torch.float32).repeat_interleave(w)[:, None], boxes.repeat(m, 1)], 1)
    return roi_align(images, rois, side, aligned=True, sampling_ratio=1).reshape(m, w, -1)


def _resized(images: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(images, size=(side, side), mode="bilinear", antialias=True).reshape(len(images), -1)


def _centred(vectors: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit length along the last axis: dot products are then correlations."""
    vectors = vectors - vectors.mean(-1, keepdim=True)
    return vectors / (vectors.norm(dim=-1, keepdim=True) + 1e-6)

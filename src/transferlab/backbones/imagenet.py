"""ImageNet-1k predictions with human-readable labels (Keras' decode_predictions) from a pretrained backbone."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferlab.backbones.registry import (
    BackboneSpec,
    create_backbone,
    get_spec,
    preprocess,
)
from transferlab.core.config import DEFAULT_BACKBONE

_PREDICT_BATCH = 32


@functools.cache
def imagenet_labels() -> list[str]:
    """The 1000 ImageNet class names in model output order, shortest common name first (e.g. 'tench')."""
    from timm.data import ImageNetInfo

    return [description.split(",")[0] for description in ImageNetInfo().label_descriptions()]


def predict_imagenet(
    images: Sequence[Image.Image],
    backbone: str = DEFAULT_BACKBONE,
    top_k: int = 5,
    weights: str | Path | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-k (ImageNet label, probability) per image."""
    spec = get_spec(backbone)
    model = create_backbone(backbone, weights=weights)
    labels = imagenet_labels()
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(images), _PREDICT_BATCH):
        batch = _to_normalized_batch(images[start : start + _PREDICT_BATCH], spec)
        with torch.inference_mode():
            probabilities, indices = model(batch).softmax(dim=-1).topk(top_k, dim=-1)
        results.extend(
            [(labels[i], p) for p, i in zip(row_p.tolist(), row_i.tolist())]
            for row_p, row_i in zip(probabilities, indices)
        )
    return results


def _to_normalized_batch(images: Sequence[Image.Image], spec: BackboneSpec) -> torch.Tensor:
    from torchvision.transforms import v2

    pixels = torch.from_numpy(np.stack([preprocess(image, spec) for image in images])).permute(0, 3, 1, 2)
    return v2.functional.normalize(pixels.float() / 255.0, list(spec.mean), list(spec.std))

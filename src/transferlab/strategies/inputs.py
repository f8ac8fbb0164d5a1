"""Training inputs the strategies share: decoded image tensors, freshly augmented batches, cached views."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from transferlab.core.progress import make_progress
from transferlab.data.augment import AugmentConfig
from transferlab.data.batch_augment import augment_batch
from transferlab.data.decoding import ImageDecodeError
from transferlab.data.store import ImageStore, decode_store
from transferlab.features.extractor import ExtractionResult, FeatureExtractor

# End-to-end training feeds images and networks in this layout: oneDNN's CPU convolutions run ~1.5x faster in it.
CHANNELS_LAST = torch.channels_last



def extract_views(
    extractor: FeatureExtractor, paths: Sequence[Path], config: AugmentConfig, views: int
) -> list[ExtractionResult]:
    """Features of views 1..`views` of every image, each augmented with its own seed (view 0 is the original)."""
    return [
        extractor.extract(paths, augment=config, view=view, description=f"features: train, view {view}/{views}")
        for view in range(1, views + 1)
    ]


def decode_images(
    extractor: FeatureExtractor, paths: Sequence[Path], description: str, quiet: bool
) -> tuple[torch.Tensor, dict[Path, str]]:
    """uint8 NCHW tensor (channels-last memory) of the images that decode, resized and centre-cropped for the
    backbone, and the failures."""

    def decode(path: Path) -> np.ndarray | str:
        try:
            return extractor.prepare(path)
        except ImageDecodeError as exc:
            return exc.message
        except (OSError, ValueError) as exc:  # anything else PIL raises on a bad file
            return f"{type(exc).__name__}: {exc}"

    arrays, failed = [], {}
    with make_progress(quiet) as progress, ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        task = progress.add_task(description, total=len(paths), rate="")
        for path, result in zip(paths, pool.map(decode, paths)):
            if isinstance(result, str):
                failed[path] = result
            else:
                arrays.append(result)
            progress.advance(task)
    size = extractor.spec.input_size
    stacked = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous(memory_format=CHANNELS_LAST), failed


def decode_once(extractor: FeatureExtractor, paths: Sequence[Path], description: str, device: str,
                quiet: bool) -> ImageStore:
    """The decode-once store of `paths` at the extractor's resize size (room for crops and shifts), for training
    on `device`; its centre crops are exactly the extractor's own inputs."""
    spec = extractor.spec
    return decode_store(paths, spec.resize_size, spec.interpolation, device=device, description=description,
                        quiet=quiet)


class ImageBatches:
    """fit()'s batch_transform for end-to-end training: the training inputs are image indices, and every
    batch returns those images (from a tensor or a decode-once store) freshly augmented on `device`, all at once
    (data.batch_augment), cropped to `output` pixels (default: the images' own size). Random draws come from
    fit's generator, so runs repeat exactly. `config=None` returns them unaugmented (centre crops)."""

    def __init__(self, images: torch.Tensor | ImageStore, config: AugmentConfig | None, output: int | None = None,
                 device: str = "cpu"):
        self.images = images
        self.config = config if config is not None and config.changes_images() else None
        self.output = output or (images.shape[-1] if isinstance(images, torch.Tensor) else images.size)
        self.device = device

    def __call__(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch = self.images[indices] if isinstance(self.images, torch.Tensor) else self.images.batch(indices)
        config = self.config or AugmentConfig.none()  # none: the centre crop
        batch = augment_batch(batch.to(self.device, non_blocking=True), config, self.output, generator)
        return batch.contiguous(memory_format=CHANNELS_LAST)

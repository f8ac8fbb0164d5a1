"""Training inputs the strategies share: decoded image tensors, freshly augmented batches, cached views."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferlab.core.progress import make_progress
from transferlab.data.augment import AugmentConfig, augment_image
from transferlab.data.decoding import ImageDecodeError
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


class ImageBatches:
    """fit()'s batch_transform for end-to-end training: the training inputs are image indices, and every
    batch returns those images freshly augmented (one seed per image drawn from fit's generator, so runs
    repeat exactly). `config=None` returns them unaugmented."""

    def __init__(self, images: torch.Tensor, config: AugmentConfig | None):
        self.images = images
        self.config = config if config is not None and config.changes_images() else None

    def __call__(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch = self.images[indices]
        if self.config is not None:
            seeds = torch.randint(0, 2**31 - 1, (len(indices),), generator=generator).tolist()
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # torchvision kernels release the GIL
                batch = torch.stack(list(pool.map(self._augment, batch, seeds)))
        return batch.contiguous(memory_format=CHANNELS_LAST)

    def _augment(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        return torch.from_numpy(np.array(augment_image(pil, self.config, seed))).permute(2, 0, 1)

"""Feature extraction with data augmentation, and the augmented-image helpers other strategies share.

Strategy `augment`, two ways to the same model (a head on the frozen base):
- cached (the default on a CPU): the frozen base runs once over K augmented views of every training image
  (cached, content-addressed by image bytes, augmentation parameters and view index) plus the original; the
  head trains on all of them.
- end to end (the default on a GPU, `end_to_end=True` anywhere): every batch is augmented afresh and runs
  through the frozen base, as the notebooks' second technique does.
Validation and test images are never augmented.

`ImageBatches` serves the end-to-end strategies (scratch, fine-tuning without an activation cache):
training images are decoded once and augmented afresh in every batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferlab.augment import AugmentConfig, augment_image
from transferlab.classifier import Classifier
from transferlab.data import DatasetSplit, ImageDecodeError
from transferlab.features import ExtractionResult, FeatureExtractor
from transferlab.progress import make_progress
from transferlab.heads import HeadConfig
from transferlab.strategies.base import (
    StrategyResult,
    TrainOptions,
    extract_split,
    extraction_timing,
    make_extractor,
    runs_end_to_end,
    tensors,
    train_head,
)
from transferlab.training import History

# End-to-end training feeds images and networks in this layout: oneDNN's CPU convolutions run ~1.5x faster in it.
CHANNELS_LAST = torch.channels_last


# Views of a frozen base's training images: the light preset. The notebooks' settings (rotation 40, shear,
# zoom 0.2) drew the head's training features away from the clean test images on Caltech-101/97 (93.1% test
# with 3 such views vs 94.7% without augmentation); light views measured 94.8% with 4 views.
VIEW_AUGMENTATION = AugmentConfig.light()


def augment_config(options: TrainOptions, default: AugmentConfig = VIEW_AUGMENTATION) -> AugmentConfig:
    """The user's augmentation, or `default`."""
    return options.augment or default


def extract_views(
    extractor: FeatureExtractor, paths: Sequence[Path], config: AugmentConfig, views: int
) -> list[ExtractionResult]:
    """Features of views 1..`views` of every image, each augmented with its own seed (view 0 is the original)."""
    return [
        extractor.extract(paths, augment=config, view=view, description=f"features: train, view {view}/{views}")
        for view in range(1, views + 1)
    ]


def train_head_on_views(
    options: TrainOptions,
    views: Sequence[np.ndarray],
    labels: np.ndarray,
    val: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
) -> tuple[torch.nn.Module, HeadConfig, History]:
    """One head fitted on every view of every training image at once (an epoch sees them all)."""
    features = torch.tensor(np.concatenate(views), dtype=torch.float32)  # torch-owned copy: see base.tensors
    targets = torch.from_numpy(np.tile(np.asarray(labels, dtype=np.int64), len(views)))
    return train_head(options, (features, targets), val, n_classes, description=f"training head ({len(views)} views)")


@dataclass
class AugmentedHead:
    """A head fitted on the frozen base's features of original and augmented training images."""

    split: DatasetSplit  # without the files that failed to decode
    head: torch.nn.Module
    head_config: HeadConfig
    history: History
    extractions: list[ExtractionResult]
    train_images: torch.Tensor | None = None  # decoded training images, when the head was trained end to end


def fit_augmented_head(extractor: FeatureExtractor, split: DatasetSplit, options: TrainOptions) -> AugmentedHead:
    """The head on the frozen base, from cached views or end to end (see the module's docstring)."""
    if runs_end_to_end(options):
        return fit_head_end_to_end(extractor, split, options)
    split, results = extract_split(extractor, split)
    views = extract_views(extractor, split.train.paths, augment_config(options), options.views)
    head, head_config, history = train_head_on_views(
        options,
        [results["train"].features, *(view.features for view in views)],
        split.train.labels,
        tensors(results["validation"].features, split.val),
        len(split.classes),
    )
    return AugmentedHead(split, head, head_config, history, [*results.values(), *views])


def fit_head_end_to_end(extractor: FeatureExtractor, split: DatasetSplit, options: TrainOptions) -> AugmentedHead:
    """The head trained on features of training images augmented afresh in every batch; validation features
    come from the cache like the cached variant's."""
    split, results = extract_split(extractor, split)
    train_images, _ = decode_images(extractor, split.train.paths, "decoding: train", options.quiet)
    head, head_config, history = train_head(
        options,
        (torch.arange(len(split.train)), torch.from_numpy(split.train.labels)),
        tensors(results["validation"].features, split.val),
        len(split.classes),
        description="training head (end to end, frozen base)",
        batch_transform=FrozenBaseFeatures(train_images, augment_config(options), extractor),
    )
    return AugmentedHead(split, head, head_config, history, list(results.values()), train_images)


def train(split: DatasetSplit, options: TrainOptions) -> StrategyResult:
    extractor = make_extractor(options)
    end_to_end = runs_end_to_end(options)
    fitted = fit_augmented_head(extractor, split, options)
    classifier = Classifier(
        backbone=options.backbone,
        classes=fitted.split.classes,
        head=fitted.head,
        head_config=fitted.head_config,
        layer=options.layer,
        weights=options.weights,
        strategy="augment",
        cache_dir=options.cache_dir,
        extractor=extractor,
    )
    extract_seconds, images_per_second = extraction_timing(fitted.extractions)
    return StrategyResult(
        classifier=classifier,
        history=fitted.history,
        split=fitted.split,
        extract_seconds=extract_seconds,
        train_seconds=fitted.history.seconds,
        images_per_second=images_per_second,
        extra={
            "views": None if end_to_end else options.views,
            "augment_path": "end-to-end" if end_to_end else "cached",
            "augment_key": augment_config(options).key(),
        },
    )


# -- end-to-end helpers -----------------------------------------------------------------------------
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
        self.config = None if config == AugmentConfig.none() else config

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


class FrozenBaseFeatures:
    """fit()'s batch_transform for the end-to-end frozen base: image indices -> freshly augmented images ->
    the frozen base's pooled features, computed on the extractor's device without gradients."""

    def __init__(self, images: torch.Tensor, config: AugmentConfig, extractor: FeatureExtractor):
        self.images = ImageBatches(images, config)
        self.device = extractor.device
        self.trunk = extractor.trunk().to(self.device, memory_format=CHANNELS_LAST).eval()

    def __call__(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return self.trunk(self.images(indices, generator).to(self.device, non_blocking=True))

"""What every strategy takes (TrainOptions) and gives back (Trained), and the one builder of a StrategyResult."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from transferlab.core.config import TrainOptions
from transferlab.core.device import resolve_device
from transferlab.core.history import History
from transferlab.data.dataset import DatasetSplit, Subset
from transferlab.features.combined import CombinedExtractor, build_extractor
from transferlab.features.extractor import ExtractionResult, FeatureExtractor
from transferlab.model.classifier import Classifier
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import BatchTransform, fit


@dataclass
class Trained:
    """What a strategy trained: a head on `extractor` (whose backbone_state holds any backbone tensors that
    training changed), on `split` without the files that failed to decode, and the extractions it ran."""

    extractor: FeatureExtractor
    head: torch.nn.Module
    head_config: HeadConfig
    history: History
    split: DatasetSplit
    extractions: list[ExtractionResult] = field(default_factory=list)
    other_feature_seconds: float = 0.0  # feature work outside the extractions (e.g. pooling cached activations)
    extra: dict = field(default_factory=dict)
    # the final extractor's features of the unaugmented split, by subset name, aligned with `split`: given by a
    # strategy that computed them (extract), so that the confidence check need not read them again
    split_features: dict[str, np.ndarray] | None = None


@dataclass
class StrategyResult:
    classifier: Classifier
    history: History
    split: DatasetSplit  # without the files that failed to decode
    extract_seconds: float = 0.0
    train_seconds: float = 0.0
    images_per_second: float = 0.0
    extra: dict = field(default_factory=dict)
    split_features: dict[str, np.ndarray] | None = None  # as Trained.split_features


def build_result(strategy: str, trained: Trained) -> StrategyResult:
    """The classifier and the timings of what a strategy trained; every strategy's result is built here."""
    classifier = Classifier(
        extractor=trained.extractor,
        classes=trained.split.classes,
        head=trained.head,
        head_config=trained.head_config,
        strategy=strategy,
    )
    extract_seconds, images_per_second = extraction_timing(trained.extractions)
    return StrategyResult(
        classifier=classifier,
        history=trained.history,
        split=trained.split,
        extract_seconds=extract_seconds + trained.other_feature_seconds,
        train_seconds=trained.history.seconds,
        images_per_second=images_per_second,
        extra=trained.extra,
        split_features=trained.split_features,
    )


def training_device(options: TrainOptions) -> str:
    """Where networks and heads train: the options' device, "auto" resolved."""
    return resolve_device(options.device)


def runs_end_to_end(options: TrainOptions) -> bool:
    """Whether augmented views are made on the fly rather than cached: by default only on a GPU, where running
    the base for every batch is cheap; on a CPU the base costs ~10 ms an image, so views are computed once."""
    return training_device(options) != "cpu" if options.end_to_end is None else options.end_to_end


def make_extractor(options: TrainOptions, **overrides) -> FeatureExtractor | CombinedExtractor:
    """The extractor the options describe; `overrides` are further FeatureExtractor keywords (e.g. until=)."""
    return build_extractor(
        options.backbone,
        layer=options.layer,
        weights=options.weights,
        device=options.device,
        runtime=options.runtime,
        precision=options.precision,
        batch_size=options.extract_batch_size,
        cache_dir=options.cache_dir,
        quiet=options.quiet,
        image_size=options.image_size,
        **overrides,
    )


def extract_split(extractor: FeatureExtractor, split: DatasetSplit) -> tuple[DatasetSplit, dict[str, ExtractionResult]]:
    """Features of train, validation and test (unaugmented); files that fail to decode leave the split.
    An int8 trunk is calibrated on the training images."""
    extractor.calibrate_on(split.train.paths)
    results = {
        name: extractor.extract(subset.paths, description=f"features: {name}")
        for name, subset in split.subsets().items()
    }
    failed = {path: reason for result in results.values() for path, reason in result.failed.items()}
    return (split.without(failed) if failed else split), results


def extraction_timing(results: Iterable[ExtractionResult]) -> tuple[float, float]:
    """(seconds spent, images per second over the images actually computed, not read from the cache)."""
    results = list(results)
    computed = [(int(r.kept.sum()) - r.cache_hits, r.seconds) for r in results if r.images_per_second > 0]
    images, seconds = sum(n for n, _ in computed), sum(s for _, s in computed)
    return sum(r.seconds for r in results), (images / seconds if seconds > 0 else 0.0)


def tensors(features: np.ndarray, subset: Subset) -> tuple[torch.Tensor, torch.Tensor]:
    # A copy into torch-owned memory, not torch.from_numpy: training on a tensor that shares the stacked
    # cache array measured 14x slower per epoch here (Caltech-101/97 head: 19.5 s vs 1.4 s for 5 epochs).
    return torch.tensor(features), torch.tensor(np.asarray(subset.labels, dtype=np.int64))


def train_head(
    options: TrainOptions,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    n_classes: int,
    description: str = "training head",
    batch_transform: BatchTransform | None = None,
) -> tuple[torch.nn.Module, HeadConfig, History]:
    """A fresh seeded head fitted on feature tensors (or on what `batch_transform` makes of the training inputs;
    the validation features give the width)."""
    config = HeadConfig(options.head, val[0].shape[1], n_classes, options.hidden, options.dropout)
    torch.manual_seed(options.fit.seed)
    head = build_head(config)
    history = fit(
        head, train, val, options.fit, n_classes=n_classes, batch_transform=batch_transform,
        device=training_device(options), quiet=options.quiet, log_epochs=options.log_epochs, description=description,
    )
    return head, config, history

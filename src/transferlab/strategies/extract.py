"""Feature extraction: run the frozen base once (cached), train a small dense head on the features."""

from __future__ import annotations

from transferlab.classifier import Classifier
from transferlab.data import DatasetSplit
from transferlab.strategies.base import StrategyResult, TrainOptions, extract_split, make_extractor, tensors, train_head


def train(split: DatasetSplit, options: TrainOptions) -> StrategyResult:
    extractor = make_extractor(options)
    split, results = extract_split(extractor, split)
    head, head_config, history = train_head(
        options,
        tensors(results["train"].features, split.train),
        tensors(results["validation"].features, split.val),
        len(split.classes),
    )
    classifier = Classifier(
        backbone=options.backbone,
        classes=split.classes,
        head=head,
        head_config=head_config,
        layer=options.layer,
        weights=options.weights,
        strategy="extract",
        cache_dir=options.cache_dir,
        extractor=extractor,
    )
    computed = [r for r in results.values() if r.images_per_second > 0]
    return StrategyResult(
        classifier=classifier,
        history=history,
        split=split,
        extract_seconds=sum(r.seconds for r in results.values()),
        train_seconds=history.seconds,
        images_per_second=(sum(r.images_per_second for r in computed) / len(computed)) if computed else 0.0,
    )

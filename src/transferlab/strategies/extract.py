"""Feature extraction: run the frozen base once (cached), train a small dense head on the features."""

from __future__ import annotations

from transferlab.data.dataset import DatasetSplit
from transferlab.strategies.base import (
    Trained,
    TrainOptions,
    extract_split,
    make_extractor,
    tensors,
    train_head,
)


def extract_and_train(split: DatasetSplit, options: TrainOptions) -> Trained:
    extractor = make_extractor(options)
    split, results = extract_split(extractor, split)
    head, head_config, history = train_head(
        options,
        tensors(results["train"].features, split.train),
        tensors(results["validation"].features, split.validation),
        len(split.classes),
    )
    return Trained(extractor, head, head_config, history, split, list(results.values()),
                   split_features={name: result.features for name, result in results.items()})

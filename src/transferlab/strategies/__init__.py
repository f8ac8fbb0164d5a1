"""Training strategies: each composes data, features, heads and training into a `Trained`; `run_strategy`
builds the classifier and the result from it.

May import: core, data, reports, backbones, features, model."""

from __future__ import annotations

from collections.abc import Callable

from transferlab.core.config import TrainOptions, check_strategy
from transferlab.data.dataset import DatasetSplit
from transferlab.strategies import augment, extract, finetune, scratch
from transferlab.strategies.base import StrategyResult, Trained, build_result

STRATEGIES: dict[str, Callable[[DatasetSplit, TrainOptions], Trained]] = {
    "extract": extract.extract_and_train,
    "augment": augment.train_on_views,
    "finetune": finetune.fine_tune_backbone,
    "scratch": scratch.train_from_scratch,
}


def run_strategy(name: str, split: DatasetSplit, options: TrainOptions) -> StrategyResult:
    return build_result(name, STRATEGIES[check_strategy(name)](split, options))


__all__ = ["STRATEGIES", "StrategyResult", "TrainOptions", "Trained", "run_strategy"]

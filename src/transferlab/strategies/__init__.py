"""Training strategies: each composes data, features, heads and training, and returns a StrategyResult."""

from __future__ import annotations

from collections.abc import Callable

from transferlab.data import DatasetSplit
from transferlab.errors import TransferlabError
from transferlab.backbones import DEFAULT_BACKBONE
from transferlab.strategies import augment, extract, finetune, scratch
from transferlab.strategies.base import StrategyResult, TrainOptions

STRATEGIES: dict[str, Callable[[DatasetSplit, TrainOptions], StrategyResult]] = {
    "extract": extract.train,
    "augment": augment.train,
    "finetune": finetune.train,
    "scratch": scratch.train,
}


def default_backbone(strategy: str) -> str:
    """The backbone a strategy uses when none is named: the small baseline convnet for scratch."""
    return scratch.DEFAULT_BACKBONE if strategy == "scratch" else DEFAULT_BACKBONE


def run_strategy(name: str, split: DatasetSplit, options: TrainOptions) -> StrategyResult:
    if name not in STRATEGIES:
        raise TransferlabError(f"unknown strategy {name!r}", hint=f"choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](split, options)


__all__ = ["STRATEGIES", "StrategyResult", "TrainOptions", "default_backbone", "run_strategy"]

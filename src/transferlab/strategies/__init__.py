"""Training strategies: each composes data, features, heads and training, and returns a StrategyResult."""

from __future__ import annotations

from collections.abc import Callable

from transferlab.data import DatasetSplit
from transferlab.errors import TransferlabError
from transferlab.backbones import DEFAULT_BACKBONE
from transferlab.strategies import augment, extract, finetune, scratch
from transferlab.strategies.base import HEAD_BATCH_SIZE, HEAD_LR, StrategyResult, TrainOptions

STRATEGIES: dict[str, Callable[[DatasetSplit, TrainOptions], StrategyResult]] = {
    "extract": extract.train,
    "augment": augment.train,
    "finetune": finetune.train,
    "scratch": scratch.train,
}


def default_backbone(strategy: str) -> str:
    """The backbone a strategy uses when none is named: the small baseline convnet for scratch."""
    return scratch.DEFAULT_BACKBONE if strategy == "scratch" else DEFAULT_BACKBONE


def default_fit(strategy: str) -> tuple[int, float]:
    """(batch size, learning rate) when none is given: large batches for heads on cached features,
    small ones for networks trained from scratch."""
    return (scratch.BATCH_SIZE, scratch.LR) if strategy == "scratch" else (HEAD_BATCH_SIZE, HEAD_LR)


def run_strategy(name: str, split: DatasetSplit, options: TrainOptions) -> StrategyResult:
    if name not in STRATEGIES:
        raise TransferlabError(f"unknown strategy {name!r}", hint=f"choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](split, options)


__all__ = ["STRATEGIES", "StrategyResult", "TrainOptions", "default_backbone", "default_fit", "run_strategy"]

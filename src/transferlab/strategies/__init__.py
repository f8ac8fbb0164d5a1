"""Training strategies: each composes data, features, heads and training, and returns a StrategyResult."""

from __future__ import annotations

from collections.abc import Callable

from transferlab.data import DatasetSplit
from transferlab.errors import TransferlabError
from transferlab.strategies import extract
from transferlab.strategies.base import StrategyResult, TrainOptions

STRATEGIES: dict[str, Callable[[DatasetSplit, TrainOptions], StrategyResult]] = {
    "extract": extract.train,
}


def run_strategy(name: str, split: DatasetSplit, options: TrainOptions) -> StrategyResult:
    if name not in STRATEGIES:
        raise TransferlabError(f"unknown strategy {name!r}", hint=f"choose one of: {', '.join(STRATEGIES)}")
    return STRATEGIES[name](split, options)


__all__ = ["STRATEGIES", "StrategyResult", "TrainOptions", "run_strategy"]

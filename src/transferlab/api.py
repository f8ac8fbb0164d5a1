"""The Python API: `transferlab.train("data/")` works; every knob is a keyword away.

A thin front: training lives in `transferlab.runs.pipeline`, comparisons in `transferlab.runs.compare`, evaluations on new
labelled folders in `transferlab.runs.evaluation`.
"""

from __future__ import annotations

from pathlib import Path

from transferlab.core.errors import TransferlabError
from transferlab.data.dataset import DatasetSplit, load_dataset
from transferlab.model.classifier import Classifier
from transferlab.runs import pipeline
from transferlab.runs.auto import train_auto
from transferlab.runs.compare import Comparison, compare
from transferlab.runs.evaluation import Evaluation, evaluate


def train(data: str | Path, *, strategy: str = "extract", budget: float | None = None, **kwargs) -> Classifier:
    """Train a classifier on a folder of images (see `transferlab.runs.pipeline.train` for every keyword).

    `strategy="auto"` tries backbones and strategies within `budget` seconds (None: fitted to the data size)
    and keeps the best on validation (see `transferlab.runs.auto`).
    """
    if strategy == "auto" and kwargs.get("engine", "local") != "local":
        raise TransferlabError("--engine ray takes a strategy whose features it computes, not auto",
                               hint="use --strategy extract or augment with --engine ray")
    if strategy == "auto":
        return train_auto(data, budget=budget, **kwargs)
    if budget is not None:
        raise TransferlabError("budget applies to --strategy auto only", hint="add --strategy auto, or drop --budget")
    return pipeline.train(data, strategy=strategy, **kwargs)


def load(run: str | Path, cache_dir: str | Path | None = None, device: str = "auto") -> Classifier:
    """Load a trained classifier from its run folder; its trunk runs on `device` (auto | cpu | cuda)."""
    return Classifier.load(run, cache_dir=Path(cache_dir) if cache_dir else None, device=device)


def dataset(data: str | Path, **kwargs) -> DatasetSplit:
    """The split `train` would use, without training (same keywords as `load_dataset`)."""
    return load_dataset(data, **kwargs)


__all__ = ["Classifier", "Comparison", "DatasetSplit", "Evaluation", "compare", "dataset", "evaluate", "load", "train"]

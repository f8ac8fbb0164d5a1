"""The Python API: `transferlab.train("data/")` works; every knob is a keyword away.

A thin front: training lives in `transferlab.pipeline`, comparisons in `transferlab.compare`.
"""

from __future__ import annotations

from pathlib import Path

from transferlab.classifier import Classifier
from transferlab.compare import Comparison, compare
from transferlab.data import DatasetSplit, load_dataset
from transferlab.pipeline import train


def load(run: str | Path, cache_dir: str | Path | None = None) -> Classifier:
    """Load a trained classifier from its run folder."""
    return Classifier.load(run, cache_dir=Path(cache_dir) if cache_dir else None)


def dataset(data: str | Path, **kwargs) -> DatasetSplit:
    """The split `train` would use, without training (same keywords as `load_dataset`)."""
    return load_dataset(data, **kwargs)


__all__ = ["Classifier", "Comparison", "DatasetSplit", "compare", "dataset", "load", "train"]

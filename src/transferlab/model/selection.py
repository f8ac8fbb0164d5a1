"""Model selection by stratified k-fold cross-validation: a score less at the mercy of one small validation split.

On 300-650 validation images one standard error of an accuracy near 95% is about a point, as large as the gaps
between the candidates `auto` weighs; k folds over train + validation score each candidate on every one of
those images once, and the spread across the folds says how far the mean can be trusted. The caller's data is
all the folds see: the test split is never passed in.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold

FOLDS = 5


@dataclass(frozen=True)
class CrossValidation:
    """Each fold's held-out accuracy."""

    scores: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))

    @property
    def folds(self) -> int:
        return len(self.scores)

    @property
    def standard_error(self) -> float:
        """Of the mean: the sample spread of the fold scores over the square root of their number (as the
        one-standard-error rule of Hastie, Tibshirani and Friedman, Elements of Statistical Learning 7.10)."""
        return float(np.std(self.scores, ddof=1) / np.sqrt(self.folds)) if self.folds > 1 else 0.0

    def __str__(self) -> str:
        return f"{self.folds}-fold cv {self.mean:.1%} ± {self.std:.1%}"


def stratified_folds(labels: np.ndarray, folds: int = FOLDS, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of each fold, every class spread evenly, the same for the same seed. With
    fewer images in the smallest class than `folds`, fewer folds (at least 2), so each class can be held out."""
    counts = np.bincount(labels)
    folds = max(2, min(folds, int(counts[counts > 0].min())))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class smaller than 2 cannot be in every fold; sklearn says so and goes on
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(np.zeros(len(labels)), labels))


def cross_validate(labels: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float], *, folds: int = FOLDS,
                   seed: int = 0) -> CrossValidation:
    """`score(training rows, held-out rows)` -> held-out accuracy, over stratified, seeded folds of `labels`."""
    return CrossValidation(tuple(float(score(train, held)) for train, held in stratified_folds(labels, folds, seed)))

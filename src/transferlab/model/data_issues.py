"""The analyses behind `transferlab doctor`, on features and labels alone: nearest neighbours (cosine), likely
label errors (out-of-fold probabilities, confident learning) and outlier scores.

Confident learning (Northcutt et al., 2021, the method of cleanlab): an image is a likely label error when its
out-of-fold probability of another class reaches that class's threshold, the mean probability the class's own
images give it, while the model's top class is not the given one either. Their number is the estimate; that
many images are flagged in order of margin (the best other class's probability minus the given one's). Written
here on scikit-learn's `cross_val_predict` rather than taking cleanlab as a dependency for these few lines.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

FOLDS = 5
NEIGHBOURS = 10
VOTERS = 20  # neighbours whose distance-weighted vote is the k-NN head's probability
CHUNK_ROWS = 1024  # rows of the similarity matrix held at once (n x 1024 float32)
OUTLIER_Z = 4.0  # robust z-score (median, MAD) beyond which a distance is an outlier
PCA_DIMENSIONS = 256


@dataclass
class Neighbours:
    """The k most similar images of each image (cosine of L2-normalised features), overall and in its own class;
    -inf similarity where a class has fewer than k other images."""

    index: np.ndarray  # [n, k] overall
    similarity: np.ndarray  # [n, k], descending
    own_similarity: np.ndarray  # [n, k] within the image's own class, descending


def neighbours(features: np.ndarray, labels: np.ndarray, k: int = NEIGHBOURS) -> Neighbours:
    """Exact cosine neighbours by chunks of a matrix product: at these sizes (thousands of images) faster than
    a tree, and the similarities are needed anyway."""
    x = normalize(np.asarray(features, dtype=np.float32))
    n = len(x)
    k = min(k, n - 1)
    index, similarity, own = (np.empty((n, k), dtype=np.int64), np.empty((n, k), np.float32),
                              np.empty((n, k), np.float32))
    for start in range(0, n, CHUNK_ROWS):
        rows = slice(start, min(n, start + CHUNK_ROWS))
        sims = x[rows] @ x.T
        sims[np.arange(sims.shape[0]), np.arange(rows.start, rows.stop)] = -np.inf  # not its own neighbour
        index[rows], similarity[rows] = _top(sims, k)
        sims[labels[rows, None] != labels[None, :]] = -np.inf
        own[rows] = _top(sims, k)[1]
    return Neighbours(index, similarity, own)


def _top(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(sims, part, 1)
    order = np.argsort(-values, axis=1)
    return np.take_along_axis(part, order, 1), np.take_along_axis(values, order, 1)


def candidate_pairs(near: Neighbours, min_similarity: float) -> list[tuple[int, int, float]]:
    """(i, j, cosine) with i < j for every neighbour pair at least `min_similarity` alike, each pair once."""
    rows, cols = np.nonzero(near.similarity >= min_similarity)
    pairs = {}
    for i, j in zip(rows, near.index[rows, cols]):
        a, b = sorted((int(i), int(j)))
        pairs[a, b] = float(near.similarity[i][near.index[i] == j][0])
    return [(a, b, s) for (a, b), s in sorted(pairs.items())]


def out_of_fold_probabilities(features: np.ndarray, labels: np.ndarray, n_classes: int, folds: int = FOLDS,
                              seed: int = 0) -> np.ndarray:
    """[n, n_classes] class probabilities of each image from heads that never saw it (stratified k folds; classes
    too small for k folds are spread as far as they go): the mean of a logistic regression's and a k-nearest-
    neighbours vote's. The two err on different images (a global boundary, a local vote): on Caltech-101 with 5%
    of the labels flipped their mean ranked the flips with precision 82-87% at recall 80-85% over four seeds of
    the flips, logistic regression alone 78-83% (docs/benchmarks.md). The features are reduced to PCA_DIMENSIONS
    first: that cut the five fits from minutes to seconds at the same accuracy."""
    x = normalize(np.asarray(features, dtype=np.float32))
    if min(x.shape) > PCA_DIMENSIONS:
        x = PCA(PCA_DIMENSIONS, random_state=seed).fit_transform(x)
    folds = max(2, min(folds, int(np.bincount(labels).max())))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    smallest_fold = len(labels) - -(-len(labels) // folds)  # training images of the largest held-out fold
    heads = (LogisticRegression(C=10.0, max_iter=200),
             KNeighborsClassifier(max(1, min(VOTERS, smallest_fold)), metric="cosine", weights="distance"))
    # One BLAS thread, in this process: the fits' small matrix products thrash with more (on 2 cores, 8.8 s
    # against 3.4 s for Caltech-101's five logistic fits), and worker processes take seconds to start.
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small classes (fewer members than folds) and unconverged fits are expected
        probabilities = np.mean([cross_val_predict(head, x, labels, cv=split, method="predict_proba")
                                 for head in heads], axis=0)
    full = np.zeros((len(labels), n_classes), dtype=np.float32)
    full[:, np.unique(labels)] = probabilities  # classes with no image keep probability 0
    return full


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> list[tuple[int, int, float]]:
    """(image, suggested class, margin) of the likely label errors, the most certain first (module docstring):
    as many as the confident joint counts off its diagonal, taken in order of margin (cleanlab's
    prune-by-noise-rate)."""
    n, n_classes = probabilities.shape
    rows = np.arange(n)
    given = probabilities[rows, labels]
    counts = np.bincount(labels, minlength=n_classes)
    thresholds = np.bincount(labels, weights=given, minlength=n_classes) / np.maximum(counts, 1)
    thresholds[counts == 0] = np.inf
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    confident = np.where(others >= thresholds, others, -np.inf)
    off_diagonal = np.isfinite(confident.max(1)) & (probabilities.argmax(1) != labels)
    suggested = others.argmax(1)
    margin = others[rows, suggested] - given
    order = np.argsort(-margin)[:int(off_diagonal.sum())]
    return [(int(i), int(suggested[i]), float(margin[i])) for i in order if margin[i] > 0]


def robust_z(values: np.ndarray) -> np.ndarray:
    """(value - median) / (1.4826 MAD): how far a value stands out, unmoved by the outliers themselves."""
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median)) or 1e-9
    return (values - median) / spread


def outliers(near: Neighbours) -> list[tuple[int, str, float]]:
    """(image, why, robust z) of images far from their own class (mean cosine distance to its nearest own-class
    images) or unlike the rest of the set (to its nearest images of any class), the farthest first."""
    k = max(1, min(5, near.similarity.shape[1]))
    overall = 1 - near.similarity[:, :k].mean(1)
    own_sims = near.own_similarity[:, :k]
    own = 1 - np.where(np.isfinite(own_sims), own_sims, np.nan)
    own = np.nanmean(np.where(np.isnan(own).all(1, keepdims=True), 1.0, own), axis=1)  # alone in its class: far
    found = {}
    for distance, why in ((own, "far from its class"), (overall, "unlike the rest of the set")):
        z = robust_z(distance)
        for i in np.flatnonzero(z > OUTLIER_Z):
            if int(i) not in found or z[i] > found[int(i)][1]:
                found[int(i)] = (why, float(z[i]))
    return sorted(((i, why, z) for i, (why, z) in found.items()), key=lambda item: -item[2])

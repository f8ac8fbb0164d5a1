"""Which classes a model confuses most: the largest off-diagonal cells, and the readable part of a big matrix."""

from __future__ import annotations

import numpy as np


def most_confused_pairs(confusion: list[list[int]], classes: list[str], top: int = 10) -> list[dict]:
    """Off-diagonal cells of the confusion matrix, largest first."""
    matrix = np.asarray(confusion)
    np.fill_diagonal(matrix, 0)
    order = np.argsort(matrix, axis=None)[::-1][:top]
    pairs = []
    for flat in order:
        true, pred = np.unravel_index(flat, matrix.shape)
        if matrix[true, pred] == 0:
            break
        pairs.append({"true": classes[true], "predicted": classes[pred], "count": int(matrix[true, pred])})
    return pairs


def most_confused_submatrix(confusion: list[list[int]], classes: list[str], size: int = 20) -> dict:
    """The confusion matrix restricted to the `size` classes involved in the most errors (as true or predicted
    class), most involved first: with many classes the full matrix is too small to read, this part is not.
    Returns classes, the counts (rows true, columns predicted) and how many of all errors it shows."""
    matrix = np.asarray(confusion)
    errors = matrix.copy()
    np.fill_diagonal(errors, 0)
    involvement = errors.sum(axis=0) + errors.sum(axis=1)
    order = [int(i) for i in np.argsort(-involvement, kind="stable")[:size] if involvement[i] > 0]
    shown = errors[np.ix_(order, order)]
    return {
        "classes": [classes[i] for i in order],
        "matrix": matrix[np.ix_(order, order)].tolist(),
        "errors_shown": int(shown.sum()),
        "errors_total": int(errors.sum()),
        "max_error": int(shown.max()) if shown.size else 0,
    }

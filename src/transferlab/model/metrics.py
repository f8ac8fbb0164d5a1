"""Evaluation of predicted class probabilities: accuracy, top-5, per-class report, confusion matrix."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)


def evaluate_probabilities(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """Metrics as plain JSON-ready values; `top5_accuracy` only when there are more than 5 classes."""
    labels = np.arange(len(classes))
    y_pred = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    metrics = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "top5_accuracy": None,
        "macro_f1": float(f1.mean()),
        "n": int(len(y_true)),
        "per_class": [
            {
                "class": name,
                "precision": float(p),
                "recall": float(r),
                "f1": float(f),
                "support": int(s),
            }
            for name, p, r, f, s in zip(classes, precision, recall, f1, support)
        ],
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if len(classes) > 5:
        metrics["top5_accuracy"] = float(top_k_accuracy_score(y_true, probabilities, k=5, labels=labels))
    return metrics

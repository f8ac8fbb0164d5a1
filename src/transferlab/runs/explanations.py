"""The run folder's heatmaps: Grad-CAM of a few test images, computed once after training for report.html.

`explanations/index.json` lists them ({"seconds": ..., "items": [{file, path, true, predicted, probability,
kind}]}); each PNG is original | overlay of the predicted class, captioned.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from transferlab.core.files import atomic_write_bytes
from transferlab.core.run_folder import EXPLANATIONS
from transferlab.model.classifier import Classifier
from transferlab.reports.heatmaps import png_bytes
from transferlab.runs.writer import TestPredictions


def chosen_images(test: TestPredictions, count: int) -> list[tuple[int, str]]:
    """(index, "top loss" | "correct"): the worst misclassified images (at most half of `count`), then correct
    ones taken in turn from each class (the surest first), up to `count`."""
    probabilities = test.probabilities
    predicted = probabilities.argmax(axis=1)
    p_true = probabilities[np.arange(len(test.labels)), test.labels]
    wrong = [int(i) for i in np.argsort(p_true) if predicted[i] != test.labels[i]][: count // 2]
    by_class = [[int(i) for i in np.argsort(-p_true) if test.labels[i] == c and predicted[i] == c]
                for c in range(len(test.classes))]
    correct: list[int] = []
    for rank in range(max(map(len, by_class), default=0)):
        correct += [images[rank] for images in by_class if rank < len(images)]
    return [(i, "top loss") for i in wrong] + [(i, "correct") for i in correct[: count - len(wrong)]]


def write_explanations(run_dir: Path, classifier: Classifier, test: TestPredictions, count: int) -> None:
    """Heatmaps of `count` test images (see `chosen_images`) under run_dir/explanations; nothing when 0."""
    chosen = chosen_images(test, count) if count else []
    if not chosen:
        return
    started = time.perf_counter()
    folder = run_dir / EXPLANATIONS
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for number, ((index, kind), explanation) in enumerate(zip(chosen, classifier.explain([test.paths[i] for i, _ in chosen]))):
        if explanation.error:
            continue
        name = f"{number:03d}.png"
        atomic_write_bytes(folder / name, png_bytes(explanation.panel()))
        path = test.paths[index]
        items.append({"file": name, "path": path.relative_to(test.root).as_posix() if path.is_relative_to(test.root)
                      else str(path), "true": test.classes[test.labels[index]], "predicted": explanation.predicted,
                      "probability": explanation.probability, "kind": kind})
    index = {"seconds": round(time.perf_counter() - started, 3), "items": items}
    atomic_write_bytes(folder / "index.json", json.dumps(index, indent=2).encode())

"""A trained classifier measured on a new labelled folder: `transferlab evaluate RUN DATA`.

The folder is read as for training (class subfolders, or a pre-split folder whose splits are taken together;
the cheap file checks of `layouts`), every image is predicted once, and the metrics are the training report's
(`metrics.evaluate_probabilities`) restricted to the classes that occur: a new folder often holds only some of
the model's classes, and the others' F1 of 0 would say nothing about the model. Written to
RUN/evaluations/<folder name>/ (or `out`), replaced as a whole on a rerun: metrics.json, predictions.csv,
failed.csv, confusion_matrix.png and report.html.
"""

from __future__ import annotations

import base64
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from transferlab.model.classifier import Classifier
from transferlab.core.errors import TransferlabError
from transferlab.data.layouts import Skipped, checked, discover, listing
from transferlab.model.metrics import evaluate_probabilities
from transferlab.reports.confusion import most_confused_pairs
from transferlab.model.prediction import ImageInput
from transferlab.core.config import check_data_folder
from transferlab.core.options import OPTIONS
from transferlab.reports.html import jinja_environment, now_text
from transferlab.reports.report import stored_explanations
from transferlab.runs.explanations import write_explanations
from transferlab.runs.writer import TestPredictions, staged

EVALUATIONS = "evaluations"


@dataclass
class Evaluation:
    """Metrics of one classifier on one labelled folder, and where they were written."""

    data: Path
    out: Path
    metrics: dict
    failed: list[Skipped] = field(default_factory=list)

    def table(self) -> Table:
        """The key numbers, then one row per class present."""
        m = self.metrics
        table = Table("class", "precision", "recall", "F1", "images",
                      title=f"{self.data.name}: accuracy {m['accuracy']:.1%}, top-5 "
                            f"{'n/a' if m['top5_accuracy'] is None else format(m['top5_accuracy'], '.1%')}, "
                            f"macro F1 {m['macro_f1']:.3f} ({m['n']} images, {len(self.failed)} failed)",
                      title_justify="left")
        for row in m["per_class"]:
            table.add_row(row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                          str(row["support"]))
        return table

    def to_dict(self) -> dict:
        return {"data": str(self.data), "out": str(self.out), **self.metrics}


def evaluate(model: Classifier | str | Path, data: str | Path, *, out: str | Path | None = None,
             tta: int = 1, explain: int = 12) -> Evaluation:
    """Evaluate `model` (a Classifier or a run folder) on the labelled images under `data`; write the results to
    `out` (default RUN/evaluations/<data folder name>/, replaced as a whole) and return them. The report shows the
    Grad-CAM heatmaps of `explain` images (the top losses, then correct ones of each class; 0: none)."""
    explain = OPTIONS["explain"].check(explain)  # train's rule for the same word
    classifier = model if isinstance(model, Classifier) else Classifier.load(model)
    data = Path(data)
    check_data_folder(data)
    destination = evaluation_folder(classifier, data, out)
    entries, skipped = labelled_images(data, classifier.classes)
    index = {name: i for i, name in enumerate(classifier.classes)}
    inputs = [ImageInput(str(path), path) for path, _ in entries]
    probabilities, kept, failed = classifier.probabilities(inputs, tta)
    skipped += [Skipped(name, reason) for name, reason in failed.items()]
    if not kept.any():
        raise TransferlabError(f"no image under {data} could be read", hint="see the reasons with --debug, or check the files")
    y_true = np.array([index[cls] for (_, cls), ok in zip(entries, kept) if ok])
    metrics = present_class_metrics(y_true, probabilities, classifier.classes)
    evaluation = Evaluation(data.resolve(), destination, {"run": str(classifier.run_dir), **metrics}, skipped)
    predictions = TestPredictions([path for (path, _), ok in zip(entries, kept) if ok], y_true, probabilities[None],
                                  classifier.classes, data.expanduser().absolute())
    write_evaluation(evaluation, predictions, classifier, explain)
    return evaluation


def evaluation_folder(classifier: Classifier, data: Path, out: str | Path | None) -> Path:
    if out is not None:
        return Path(out)
    if classifier.run_dir is None:
        raise TransferlabError("this classifier has no run folder to write the evaluation into", hint="pass out=FOLDER")
    return Path(classifier.run_dir) / EVALUATIONS / (data.resolve().name or "data")


def labelled_images(data: Path, known: list[str]) -> tuple[list[tuple[Path, str]], list[Skipped]]:
    """(path, class) of every usable image under `data`, and the files left out; classes the model does not know
    are an error that names them."""
    _, classes, groups = discover(data.expanduser().absolute())
    unknown = sorted(set(classes) - set(known))
    if unknown:
        raise TransferlabError(
            f"{len(unknown)} class(es) in {data} are unknown to the model: {listing(unknown)}",
            hint=f"the model knows: {listing(known, 40)}; move the other folders out of {data}",
        )
    groups, skipped = checked(groups)
    entries = sorted(entry for group in groups.values() for entry in group)
    if not entries:
        raise TransferlabError(f"no usable image under {data}", hint="pass a folder with one subfolder of images per class")
    return entries, skipped


def present_class_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict:
    """The training report's metrics, with per-class rows, macro F1 and the confusion matrix restricted to the
    classes that occur (as true or as predicted class); top-5 accuracy still ranks among all the model's classes."""
    metrics = evaluate_probabilities(y_true, probabilities, classes)
    predicted = probabilities.argmax(axis=1)
    shown = sorted(set(y_true.tolist()) | set(predicted.tolist()))
    matrix = np.asarray(metrics["confusion_matrix"])[np.ix_(shown, shown)]
    rows = [metrics["per_class"][i] for i in shown]
    present = [row for row in rows if row["support"] > 0]
    return {
        **metrics,
        "macro_f1": float(np.mean([row["f1"] for row in present])),
        "classes": [classes[i] for i in shown],
        "classes_present": len(present),
        "per_class": rows,
        "confusion_matrix": matrix.tolist(),
    }


def write_evaluation(evaluation: Evaluation, predictions: TestPredictions, classifier: Classifier, explain: int) -> None:
    """The evaluation folder, written aside and moved into place when complete (see `runs.staged`), with the
    heatmaps of `explain` of its images."""
    from transferlab.reports.plots import save_confusion_matrix  # matplotlib only when drawing: `import transferlab.api` stays light

    metrics, classes, probabilities = evaluation.metrics, classifier.classes, predictions.probabilities
    with staged(evaluation.out) as folder:
        (folder / "metrics.json").write_text(json.dumps(evaluation.to_dict(), indent=2) + "\n")
        with (folder / "predictions.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "class", "predicted", "probability", "correct"])
            for path, label, row in zip(predictions.paths, predictions.labels, probabilities):
                best = int(row.argmax())
                writer.writerow([str(path), classes[label], classes[best], f"{row[best]:.6f}", int(best == label)])
        with (folder / "failed.csv").open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "reason"])
            writer.writerows([item.path, item.reason] for item in evaluation.failed)
        save_confusion_matrix(metrics["confusion_matrix"], metrics["classes"], folder / "confusion_matrix.png")
        write_explanations(folder, classifier, predictions, explain)
        html = jinja_environment().get_template("evaluation.html.j2").render(
            title=f"Evaluation on {evaluation.data.name}", generated=now_text(), evaluation=evaluation, m=metrics,
            confusion_png=png_uri(folder / "confusion_matrix.png"),
            confused_pairs=most_confused_pairs(metrics["confusion_matrix"], metrics["classes"]),
            explanations=stored_explanations(folder),
        )
        (folder / "report.html").write_text(html, encoding="utf-8")


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")

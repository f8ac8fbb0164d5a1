"""transferlab in Jupyter: HTML cards for classifiers, comparisons and summaries, and the lessons' pictures
as matplotlib figures.

Classifier, Comparison and Summary delegate their `_repr_html_` and figure methods here. The pictures are the
run folder's (plots.py builds both) and the report's (its top losses), so a notebook and a run folder never
disagree. Figures are returned, not shown: Jupyter displays a returned figure, and `fig.savefig(...)` keeps it.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from transferlab.core.errors import TransferlabError
from transferlab.core.history import History
from transferlab.core.run_folder import REPORT, TEST_PREDICTIONS, read_run_json
from transferlab.data.augment import AugmentConfig
from transferlab.data.previews import featurewise_preview, preview_variants
from transferlab.reports.html import formatted, render_card
from transferlab.reports.report import key_numbers, timings, top_losses

if TYPE_CHECKING:
    from matplotlib.figure import Figure


CARD_CURVES_SIZE = (8, 5.5)  # inches at CARD_DPI: a 480 x 330 px picture in the card
CARD_DPI = 60
CARD_CLASSES_SHOWN = 6
THUMBNAIL_PX = 224
CORRECT, WRONG = "#1a7f37", "#cf222e"


# -- HTML cards ---------------------------------------------------------------------------------------
def classifier_card(classifier) -> str:
    """Backbone, strategy, classes, test metrics, timings, curves and the run folder of a classifier."""
    metrics = classifier.metrics
    rows = [("backbone", classifier.backbone), ("strategy", classifier.strategy), ("classes", classes_text(classifier))]
    if metrics.get("test_accuracy") is not None:
        rows += [(label, value) for label, value in key_numbers(metrics) if label != "classes"]
        rows += [(f"{label} time" if value.endswith(" s") else label, value)  # "extract" -> "extract time"
                 for label, value in timings(metrics) if label != "total"]
    else:
        rows.append(("test accuracy", "not evaluated (train it with transferlab.train)"))
    history = history_of(classifier)
    curves = figure_uri(curves_figure(history.epochs, size=CARD_CURVES_SIZE)) if history and history.epochs else None
    card = {"title": f"transferlab Classifier: {classifier.strategy} on {classifier.backbone}", "rows": rows,
            "curves": curves, **folder_links(classifier.run_dir)}
    return render_card("classifier_card", card)


def comparison_card(comparison) -> str:
    """The comparison table (best test accuracy in bold), the validation curves per strategy, the folder."""
    headers = ("strategy", "backbone", "test acc.", "top-5", "train s", "extraction s", "total s", "img/s")
    accuracies = [row.get("test_accuracy") or 0.0 for row in comparison.rows]
    card = {
        "title": f"transferlab comparison: {len(comparison.rows)} strategies on one split",
        "headers": headers,
        "rows": [formatted(row) for row in comparison.rows],
        "best": int(np.argmax(accuracies)) if accuracies else -1,
        "curves": figure_uri(comparison_plot(comparison, size=(12, 4))) if comparison.classifiers else None,
        **folder_links(comparison.out),
    }
    return render_card("comparison_card", card)


def classes_text(classifier) -> str:
    shown = ", ".join(classifier.classes[:CARD_CLASSES_SHOWN])
    more = f", … ({len(classifier.classes) - CARD_CLASSES_SHOWN} more)" if len(classifier.classes) > CARD_CLASSES_SHOWN else ""
    return f"{len(classifier.classes)}: {shown}{more}"


def folder_links(folder: Path | None) -> dict:
    """Links to a run (or compare) folder and its report: relative to the working directory (the notebook's
    folder, where Jupyter serves files) when inside it, file: URIs otherwise."""
    if folder is None:
        return {"folder": None, "report": None}
    folder = Path(folder).resolve()
    report = folder / REPORT
    inside = relative_to_cwd(folder)
    return {"folder": {"path": inside or str(folder), "href": href(folder)},
            "report": {"href": href(report)} if report.is_file() else None}


def relative_to_cwd(path: Path) -> str | None:
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return None


def href(path: Path) -> str:
    return relative_to_cwd(path) or path.as_uri()


def figure_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=CARD_DPI)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# -- figures ------------------------------------------------------------------------------------------
def history_of(classifier) -> History | None:
    """The training history: kept by `train`, read back from history.csv for a loaded run."""
    if classifier.history is None and classifier.run_dir and (Path(classifier.run_dir) / "history.csv").is_file():
        classifier.history = History.read_csv(Path(classifier.run_dir) / "history.csv")
    return classifier.history


def curves_figure(epochs: list[dict], size: tuple[float, float]) -> Figure:
    from transferlab.reports.plots import SMOOTHING, history_figure

    return history_figure(epochs, SMOOTHING, size=size)


def plot_history(classifier, smooth: float | None = 0.8) -> Figure:
    """Accuracy and loss per epoch, training vs validation: raw, and EMA-smoothed with factor `smooth`
    (as the lessons plot them); `smooth=None` draws the raw curves only."""
    from transferlab.reports.plots import history_figure

    history = history_of(classifier)
    if not history or not history.epochs:
        raise TransferlabError("this classifier has no training history",
                               hint="train it with transferlab.train, or load a run folder that has history.csv")
    return history_figure(history.epochs, smooth)


def plot_confusion_matrix(classifier) -> Figure:
    """The test set's row-normalised confusion matrix (the run folder's confusion_matrix.png)."""
    from transferlab.reports.plots import confusion_matrix_figure

    matrix = classifier.metrics.get("test", {}).get("confusion_matrix")
    if matrix is None:
        raise TransferlabError("this classifier has no test metrics",
                               hint="train it with transferlab.train, or load a run folder that has metrics.json")
    return confusion_matrix_figure(matrix, classifier.classes)


def explanation_card(explanation) -> str:
    """A `model.explain.Explanation` in a notebook: original | heatmap overlay, captioned."""
    from html import escape

    from transferlab.reports.heatmaps import png_data_uri

    if explanation.error:
        return f"<p>{escape(explanation.source)}: {escape(explanation.error)}</p>"
    return (f'<figure style="margin:4px"><img src="{png_data_uri(explanation.panel())}">'
            f"<figcaption>{escape(explanation.source)}</figcaption></figure>")


def show_top_losses(classifier, n: int = 9, explain: bool = False) -> Figure:
    """The n misclassified test images the model was surest about (lowest probability of the true class),
    titled true / predicted / probability of the prediction: the report's top losses, from the test
    predictions the run recorded. `explain`: each with the heatmap of the predicted class over it."""
    from transferlab.reports.plots import image_grid_figure

    run = run_folder(classifier)
    data_root = Path(read_run_json(run, "config.json")["data"])
    losses = top_losses(run, data_root, classifier.metrics.get("test_is_validation", False), limit=n)
    items = [item for item in losses["items"] if (data_root / item["path"]).is_file()]
    titles = [f"{item['true']} / {item['predicted']}\np={item['p_predicted']:.2f}" for item in items]
    paths = [data_root / item["path"] for item in items]
    pictures = [e.overlay() for e in classifier.explain(paths)] if explain and paths else map(thumbnail, paths)
    fig = image_grid_figure(list(pictures), titles,
                            colours=[WRONG] * len(items))
    fig.suptitle(f"top losses: {len(items)} of {losses['n_wrong']} misclassified {losses['split']} images\n"
                 "(true / predicted / probability)" if items else f"no misclassified {losses['split']} image shown",
                 fontsize=10)
    fig.tight_layout()
    return fig


def show_predictions(classifier, images: Sequence, labels: Sequence[str] | None = None) -> Figure:
    """Each image with its predicted class and probability; green / red when the true `labels` are given."""
    from transferlab.reports.plots import image_grid_figure

    if labels is not None and len(labels) != len(images):
        raise TransferlabError(f"{len(images)} images but {len(labels)} labels", hint="pass one label per image")
    predictions = classifier.predict(list(images), top_k=1)
    titles, colours = [], []
    for index, prediction in enumerate(predictions):
        label, p = prediction.top[0] if prediction.top else (None, 0.0)
        titles.append(f"{label} ({p:.0%})" if label else f"failed: {prediction.error}")
        truth = labels[index] if labels is not None else None
        colours.append("black" if truth is None else CORRECT if truth == label else WRONG)
    return image_grid_figure([thumbnail(image) for image in images], titles, colours=colours)


def show_augmentations(
    image: str | Path | Image.Image,
    augment: AugmentConfig | str = "notebook",
    n: int = 8,
    seed: int = 0,
    fit_on: Sequence[str | Path | Image.Image] = (),
    size: int = 32,
) -> Figure:
    """The original and n augmented variants, as the lessons preview ImageDataGenerator.

    With featurewise centering / std normalization / ZCA whitening in `augment`, the variants are shown
    standardized (by `augment.featurewise_preview`: resized to size x size, small enough for ZCA, and stretched
    to 0..255 to be seen), with the standardizer fitted on the `fit_on` images (training images, as Keras'
    `datagen.fit(x_train)`) together with the variants.
    """
    from transferlab.reports.plots import image_grid_figure

    config = AugmentConfig.preset(augment) if isinstance(augment, str) else augment
    labelled = preview_variants(thumbnail(image, limit=None), config, n=n, seed=seed)
    titles, pictures = [label for label, _ in labelled], [picture for _, picture in labelled]
    if config.featurewise_center or config.featurewise_std_normalization or config.zca_whitening:
        fitted = [thumbnail(item, limit=None) for item in fit_on]
        pictures[1:] = featurewise_preview([*fitted, *pictures[1:]], config, size=size)[len(fitted):]
        kind = "ZCA-whitened" if config.zca_whitening else "standardized"
        titles[1:] = [f"{title}, {kind}" for title in titles[1:]]
    return image_grid_figure(pictures, titles)


def comparison_plot(comparison, metrics: Sequence[str] = ("accuracy", "loss"),
                    size: tuple[float, float] | None = None) -> Figure:
    """Validation curves of every strategy in one figure (the compare folder's overlay plots)."""
    from transferlab.reports.plots import comparison_figure

    histories = {name: history_of(c).epochs for name, c in comparison.classifiers.items() if history_of(c)}
    fig = comparison_figure(histories, list(metrics))
    if size:
        fig.set_size_inches(*size)
        fig.tight_layout()
    return fig


# -- helpers ------------------------------------------------------------------------------------------
def run_folder(classifier) -> Path:
    """The classifier's run folder, with the test predictions recorded at training time."""
    run = Path(classifier.run_dir) if classifier.run_dir else None
    if run is None or not (run / TEST_PREDICTIONS).is_file() or not (run / "config.json").is_file():
        raise TransferlabError(f"this classifier has no run folder with {TEST_PREDICTIONS} and config.json",
                               hint="train it with transferlab.train, or load it with transferlab.load(run_folder)")
    return run


def thumbnail(image: str | os.PathLike | Image.Image, limit: int | None = THUMBNAIL_PX) -> Image.Image:
    """An image file or PIL image as RGB, shrunk to fit limit x limit (None: full size)."""
    from transferlab.data.decoding import open_image

    picture = image if isinstance(image, Image.Image) else open_image(Path(image))
    picture = picture.convert("RGB")
    if limit:
        picture.thumbnail((limit, limit))
    return picture

"""Pictures people would rather look at than read: training curves, confusion matrices, comparisons, image grids.

Each picture is built by a `*_figure` function that returns a matplotlib Figure (a notebook shows it inline);
the run folder's PNG writers save those same figures. Figures are made as `matplotlib.figure.Figure`s, not with
pyplot: no GUI backend is chosen, no global figure list to leak into, and a notebook's own pyplot backend is
left alone.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

SMOOTHING = 0.8  # the notebooks' exponential moving average factor
METRICS = ("accuracy", "loss")


class InlineFigure(Figure):
    """A Figure that Jupyter shows by itself, as a PNG, whichever matplotlib backend the kernel has (IPython's
    inline display is only wired up for figures once pyplot has been imported)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()


def smooth(values: list[float], factor: float = SMOOTHING) -> list[float]:
    """Exponential moving average: s_t = factor * s_{t-1} + (1 - factor) * x_t, starting at x_0."""
    smoothed: list[float] = []
    for value in values:
        smoothed.append(smoothed[-1] * factor + value * (1 - factor) if smoothed else value)
    return smoothed


def save_figure(fig: Figure, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def label_epoch_axes(ax, title: str) -> None:
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.legend()


def plot_history_on(ax, epochs: list[dict], metric: str, factor: float | None) -> None:
    """Training and validation `metric` per epoch on `ax`: raw when `factor` is None, else EMA-smoothed."""
    x = [row["epoch"] for row in epochs]
    transform = list if factor is None else (lambda values: smooth(values, factor))
    ax.plot(x, transform([r[metric] for r in epochs]), "o-", ms=3, label=f"training {metric}")
    ax.plot(x, transform([r[f"val_{metric}"] for r in epochs]), "s-", ms=3, label=f"validation {metric}")
    label_epoch_axes(ax, f"{metric}, raw" if factor is None else f"{metric}, smoothed (EMA {factor})")


def metric_curves_figure(epochs: list[dict], metric: str, factor: float = SMOOTHING) -> Figure:
    """One metric, training vs validation: raw (left) and smoothed (right), as the run folder's PNGs."""
    fig = InlineFigure(figsize=(11, 4))
    left = fig.add_subplot(1, 2, 1)
    right = fig.add_subplot(1, 2, 2, sharey=left)
    plot_history_on(left, epochs, metric, None)
    plot_history_on(right, epochs, metric, factor)
    return fig


def history_figure(epochs: list[dict], factor: float | None = SMOOTHING, size: tuple[float, float] = (11, 7.5)) -> Figure:
    """Accuracy (top) and loss (bottom), raw (left) and smoothed (right); raw only when `factor` is None."""
    columns = 1 if factor is None else 2
    fig = InlineFigure(figsize=size if columns == 2 else (size[0] / 2, size[1]))
    for row, metric in enumerate(METRICS):
        raw = fig.add_subplot(2, columns, row * columns + 1)
        plot_history_on(raw, epochs, metric, None)
        if factor is not None:
            plot_history_on(fig.add_subplot(2, columns, row * columns + 2, sharey=raw), epochs, metric, factor)
    fig.tight_layout()
    return fig


def save_training_curves(epochs: list[dict], out_dir: Path) -> list[Path]:
    """accuracy.png and loss.png: training vs validation, raw (left) and smoothed (right)."""
    return [save_figure(metric_curves_figure(epochs, metric), out_dir / f"{metric}.png") for metric in METRICS]


def confusion_matrix_figure(matrix: list[list[int]], classes: list[str]) -> Figure:
    """Row-normalised confusion matrix; labels shown when there are few enough classes to read them."""
    counts = np.asarray(matrix, dtype=float)
    normalised = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = min(4 + 0.18 * n, 22)
    fig = InlineFigure(figsize=(size, size))
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    ticks = np.arange(n)
    fontsize = 9 if n <= 20 else max(3, 9 - n // 20)
    ax.set_xticks(ticks, classes, rotation=90, fontsize=fontsize)
    ax.set_yticks(ticks, classes, fontsize=fontsize)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if counts[i, j]:
                    colour = "white" if normalised[i, j] > 0.5 else "black"
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", color=colour, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if n <= 20:
        fig.tight_layout()
    else:
        # tight_layout lays out every tick label once more (at 97 classes: 1.45 s with it, 0.95 s without).
        # Margins sized from the longest label do the same job here.
        label_inches = max(len(c) for c in classes) * fontsize * 0.6 / 72 + 0.5
        fig.subplots_adjust(left=label_inches / size, bottom=label_inches / size, right=0.92, top=0.98)
    return fig


def save_confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path) -> Path:
    return save_figure(confusion_matrix_figure(matrix, classes), path, tight=False)  # laid out when built


def comparison_figure(histories: dict[str, list[dict]], metrics: Sequence[str] = METRICS) -> Figure:
    """Validation `metrics` per epoch side by side, one line per strategy."""
    fig = InlineFigure(figsize=(7 * len(metrics), 4.5))
    for column, metric in enumerate(metrics, start=1):
        plot_comparison_on(fig.add_subplot(1, len(metrics), column), histories, metric)
    fig.tight_layout()
    return fig


def plot_comparison_on(ax, histories: dict[str, list[dict]], metric: str) -> None:
    for name, epochs in histories.items():
        ax.plot([r["epoch"] for r in epochs], [r[f"val_{metric}"] for r in epochs], "o-", ms=3, label=name)
    label_epoch_axes(ax, f"validation {metric} per epoch")


def save_comparison_curves(histories: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """Validation accuracy and loss per epoch, one line per strategy (compare_accuracy.png, compare_loss.png)."""
    return [
        save_figure(comparison_figure(histories, [metric]), out_dir / f"compare_{metric}.png", tight=False)
        for metric in METRICS
    ]


def image_grid_figure(images: Sequence, titles: Sequence[str], columns: int | None = None,
                      colours: Sequence[str] | None = None) -> Figure:
    """Images (PIL or arrays) on a near-square grid, one title each (coloured when `colours` is given)."""
    n = len(images)
    columns = columns or max(1, int(np.ceil(np.sqrt(n))))
    rows = max(1, -(-n // columns))
    fig = InlineFigure(figsize=(2.6 * columns, 2.8 * rows))
    for index, (image, title) in enumerate(zip(images, titles, strict=True)):
        ax = fig.add_subplot(rows, columns, index + 1)
        ax.imshow(np.asarray(image), cmap="gray" if np.asarray(image).ndim == 2 else None)
        ax.set_title(title, fontsize=8, color=colours[index] if colours else "black")
        ax.axis("off")
    fig.tight_layout()
    return fig

"""What a notebook shows: HTML cards, figures from the lessons, a one-line repr, Keras-style verbose levels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, write_colour_images
from matplotlib.figure import Figure
from PIL import Image

import transferlab
from transferlab.core.errors import TransferlabError
from transferlab.data.augment import AugmentConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """green, plus red and red2 drawn from one distribution: the model must confuse the two reds."""
    root = tmp_path_factory.mktemp("notebook") / "data"
    for seed, (name, colour) in enumerate((("green", "green"), ("red", "red"), ("red2", "red"))):
        write_colour_images(root / name, COLOURS[colour], 20, seed=seed)
    return root


@pytest.fixture(scope="module")
def comparison(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("notebook-compare") / "out"
    return transferlab.compare(data, ["extract", "augment"], out=out, epochs=6, finetune={"views": 1}, lr=3e-3,
                               verbose=0)


@pytest.fixture(scope="module")
def clf(comparison):
    return comparison.classifiers["extract"]


def images_shown(fig: Figure) -> int:
    return sum(len(ax.images) for ax in fig.axes)


def test_plot_history_draws_raw_and_ema_smoothed_accuracy_and_loss(clf):
    fig = clf.plot_history(smooth=0.8)
    titles = [ax.get_title() for ax in fig.axes]
    assert isinstance(fig, Figure) and len(fig.axes) == 4
    assert titles == ["accuracy, raw", "accuracy, smoothed (EMA 0.8)", "loss, raw", "loss, smoothed (EMA 0.8)"]
    epochs = len(clf.history.epochs)
    assert all(len(line.get_xdata()) == epochs for ax in fig.axes for line in ax.lines)
    assert [ax.get_title() for ax in clf.plot_history(smooth=None).axes] == ["accuracy, raw", "loss, raw"]


def test_plot_confusion_matrix_has_one_cell_per_pair_of_classes(clf):
    fig = clf.plot_confusion_matrix()
    matrix_axes = fig.axes[0]  # the second is the colour bar
    assert matrix_axes.images[0].get_array().shape == (3, 3)
    assert [t.get_text() for t in matrix_axes.get_yticklabels()] == clf.classes


def test_show_top_losses_shows_up_to_n_misclassified_images_with_true_predicted_probability(clf):
    matrix = np.array(clf.metrics["test"]["confusion_matrix"])
    wrong = int(matrix.sum() - np.trace(matrix))
    assert wrong >= 2, "red and red2 are indistinguishable, so some test images must be misclassified"
    fig = clf.show_top_losses(n=2)
    assert images_shown(fig) == 2
    for ax in fig.axes:
        true, rest = ax.get_title().split(" / ")
        predicted, probability = rest.split("\np=")
        assert true != predicted and {true, predicted} <= set(clf.classes) and 0 <= float(probability) <= 1
    assert images_shown(clf.show_top_losses(n=50)) == wrong


def test_show_predictions_titles_each_image_with_class_and_probability(clf, data):
    greens = sorted((data / "green").glob("*.jpg"))[:3]
    fig = clf.show_predictions(greens, labels=["green", "green", "red"])
    assert images_shown(fig) == 3
    assert all(ax.get_title().startswith("green (") for ax in fig.axes)
    assert [ax.title.get_color() for ax in fig.axes] == ["#1a7f37", "#1a7f37", "#cf222e"]  # right, right, wrong


def test_show_augmentations_shows_the_original_and_n_variants(data):
    image = sorted((data / "green").glob("*.jpg"))[0]
    fig = transferlab.show_augmentations(image, augment="notebook", n=5)
    assert images_shown(fig) == 6
    assert [ax.get_title() for ax in fig.axes] == ["original"] + [f"seed {i}" for i in range(5)]


def test_show_augmentations_applies_zca_whitening_fitted_on_the_given_images():
    rng = np.random.default_rng(0)
    small = [Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)) for _ in range(40)]
    fig = transferlab.show_augmentations(small[0], AugmentConfig(zca_whitening=True), n=3, fit_on=small, size=8)
    assert images_shown(fig) == 4
    assert [ax.get_title() for ax in fig.axes][1:] == [f"seed {i}, ZCA-whitened" for i in range(3)]
    shown = fig.axes[1].images[0].get_array()
    assert shown.shape[:2] == (8, 8) and shown.min() == 0 and shown.max() == 255  # stretched for display


def test_classifier_card_shows_accuracy_class_count_curves_and_run_folder(clf):
    html = clf._repr_html_()
    assert f"{clf.metrics['test_accuracy']:.1%}" in html
    assert "3: green, red, red2" in html
    assert "efficientnet_lite0" in html and "extract" in html
    assert 'src="data:image/png;base64,' in html  # the curves, inline
    assert str(Path(clf.run_dir).resolve()) in html and "report.html" in html
    assert "extract time" in html and ">epochs<" in html  # timings say so; the epoch count is not a time


def test_loaded_classifier_card_reads_its_curves_from_the_run_folder(clf):
    loaded = transferlab.load(clf.run_dir)
    html = loaded._repr_html_()
    assert f"{clf.metrics['test_accuracy']:.1%}" in html and 'src="data:image/png;base64,' in html
    assert len(loaded.plot_history().axes[0].lines[0].get_xdata()) == len(clf.history.epochs)


def test_card_of_a_model_without_metrics_or_history_says_it_was_not_evaluated(clf, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.json", "model.safetensors", "labels.txt"):
        shutil.copy(Path(clf.run_dir) / name, bare / name)
    html = transferlab.load(bare)._repr_html_()
    assert "not evaluated" in html and "<img" not in html and "3: green, red, red2" in html


def test_repr_stays_one_line(clf, comparison):
    assert "\n" not in repr(clf)
    assert repr(clf) == "Classifier(backbone='efficientnet_lite0', strategy='extract', classes=3)"


def test_comparison_card_lists_every_strategy_and_marks_the_best(comparison):
    html = comparison._repr_html_()
    for row in comparison.rows:
        assert f"<td style=\"text-align:left;padding:2px 12px 2px 0;vertical-align:top\">{row['strategy']}</td>" in html
        assert f"{row['test_accuracy']:.1%}" in html
    assert html.count('style="font-weight:600"') == 1 and 'src="data:image/png;base64,' in html


def test_comparison_of_runs_outside_its_folder_is_a_clear_error(clf, tmp_path):
    from transferlab.runs.compare import Comparison

    with pytest.raises(TransferlabError, match="is not inside"):
        Comparison.of({"extract": clf}, tmp_path / "elsewhere")


def test_comparison_plot_draws_one_line_per_strategy_for_accuracy_and_loss(comparison):
    fig = comparison.plot()
    assert [ax.get_title() for ax in fig.axes] == ["validation accuracy per epoch", "validation loss per epoch"]
    assert all(len(ax.lines) == 2 for ax in fig.axes)


def test_compare_export_and_summary_are_functions_of_the_package_even_once_their_modules_are_imported():
    import inspect

    import transferlab.deploy.export  # noqa: F401
    import transferlab.model.summary  # noqa: F401
    import transferlab.runs.compare  # noqa: F401

    assert all(inspect.isfunction(getattr(transferlab, name)) for name in ("compare", "export", "summary"))


def test_summary_is_callable_from_the_package_and_shows_as_a_table(clf):

    summary = transferlab.summary(clf)
    html = summary._repr_html_()
    assert "total parameters" in html and f"{summary.total:,}" in html and "<table>" in html


def test_figures_render_themselves_as_png_for_jupyter(clf):
    assert clf.plot_confusion_matrix()._repr_png_().startswith(PNG_MAGIC)


def test_verbose_2_prints_one_line_per_epoch_and_no_progress_bars(data, tmp_path, capsys):
    transferlab.train(data, out=tmp_path / "run", epochs=3, fit={"patience": None}, verbose=2)
    out = capsys.readouterr().out
    assert [line.split(" - ")[0] for line in out.splitlines() if "epoch" in line] == [
        f"training head: epoch {i}/3" for i in (1, 2, 3)
    ]
    assert "━" not in out


def test_verbose_0_prints_nothing(data, tmp_path, capsys):
    transferlab.train(data, out=tmp_path / "run", epochs=2, verbose=0)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_verbose_must_be_0_1_or_2(data):
    with pytest.raises(TransferlabError, match="verbose must be 0, 1 or 2"):
        transferlab.train(data, verbose=3)


def test_loading_and_predicting_leave_matplotlib_unloaded(clf, data):
    image = sorted((data / "green").glob("*.jpg"))[0]
    code = (
        "import sys, transferlab; "
        f"transferlab.load({str(clf.run_dir)!r}).predict([{str(image)!r}]); "
        "print('matplotlib' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

"""`transferlab evaluate RUN DATA` and `transferlab.evaluate`: a trained model measured on a new labelled folder."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

import transferlab
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError
from transferlab.runs.evaluation import present_class_metrics

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import make_colour_run

    return make_colour_run(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture
def new_folder(tmp_path):
    """Unseen red and blue images (no green), plus one file that is not an image."""
    from conftest import COLOURS, write_colour_images

    for seed, name in ((11, "red"), (12, "blue")):
        write_colour_images(tmp_path / "new" / name, COLOURS[name], 6, seed=seed)
    (tmp_path / "new" / "blue" / "broken.jpg").write_text("not an image")
    return tmp_path / "new"


def test_evaluate_writes_metrics_plot_and_report_into_the_run(run_dir, new_folder):
    evaluation = transferlab.evaluate(run_dir, new_folder)
    folder = run_dir / "evaluations" / "new"
    assert evaluation.out == folder
    assert {p.name for p in folder.iterdir()} >= {"metrics.json", "predictions.csv", "failed.csv",
                                                  "confusion_matrix.png", "report.html"}
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["n"] == 12 and metrics["accuracy"] > 0.9
    assert "Evaluation on new" in (folder / "report.html").read_text()
    assert len(list(csv.DictReader((folder / "predictions.csv").open()))) == 12


def test_evaluate_shows_heatmaps_of_its_images_in_the_report(run_dir, new_folder, tmp_path):
    evaluation = transferlab.evaluate(run_dir, new_folder, out=tmp_path / "four", explain=4)
    index = json.loads((evaluation.out / "explanations" / "index.json").read_text())
    assert len(index["items"]) == 4 and {item["true"] for item in index["items"]} == {"red", "blue"}
    assert all((evaluation.out / "explanations" / item["file"]).is_file() for item in index["items"])
    assert all(not item["path"].startswith("/") for item in index["items"])  # relative to the evaluated folder
    assert "Where the model looked" in (evaluation.out / "report.html").read_text()
    none = transferlab.evaluate(run_dir, new_folder, out=tmp_path / "none", explain=0)
    assert not (none.out / "explanations").exists()
    with pytest.raises(TransferlabError, match="explain"):
        transferlab.evaluate(run_dir, new_folder, out=tmp_path / "bad", explain=-1)


def test_evaluate_reports_unreadable_files_without_counting_them(run_dir, new_folder):
    evaluation = transferlab.evaluate(run_dir, new_folder)
    rows = list(csv.DictReader((evaluation.out / "failed.csv").open()))
    assert [row["path"].endswith("broken.jpg") for row in rows] == [True]
    assert evaluation.metrics["n"] == 12


def test_metrics_cover_the_classes_present_only(run_dir, new_folder):
    metrics = transferlab.evaluate(run_dir, new_folder).metrics
    present = {row["class"] for row in metrics["per_class"] if row["support"]}
    assert present == {"red", "blue"} and metrics["classes_present"] == 2


def test_macro_f1_averages_the_classes_that_occur():
    probabilities = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0]])  # class 2 never occurs
    metrics = present_class_metrics(np.array([0, 1, 1]), probabilities, ["a", "b", "c"])
    assert metrics["classes"] == ["a", "b"] and np.asarray(metrics["confusion_matrix"]).tolist() == [[1, 0], [1, 1]]
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)  # F1 of a and b, not divided by 3


def test_classes_unknown_to_the_model_are_named(run_dir, new_folder):
    shutil.copytree(new_folder / "red", new_folder / "purple")
    with pytest.raises(TransferlabError, match="unknown to the model: purple"):
        transferlab.evaluate(run_dir, new_folder)


def test_evaluate_takes_a_classifier_and_an_out_folder(run_dir, new_folder, tmp_path):
    evaluation = transferlab.evaluate(transferlab.load(run_dir), new_folder, out=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "metrics.json").is_file() and evaluation.out == tmp_path / "elsewhere"


def test_cli_evaluate_prints_a_table_and_json(run_dir, new_folder, tmp_path):
    table = runner.invoke(app, ["evaluate", str(run_dir), str(new_folder), "--out", str(tmp_path / "t")])
    assert table.exit_code == 0, table.output
    assert "accuracy" in table.output and "red" in table.output and "report.html" in table.output
    as_json = runner.invoke(app, ["--json", "evaluate", str(run_dir), str(new_folder), "--out", str(tmp_path / "j"),
                                  "--explain", "0"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["n"] == 12
    assert (tmp_path / "t" / "explanations").is_dir() and not (tmp_path / "j" / "explanations").exists()


def test_compare_evaluate_and_export_are_callable_at_the_top_level():
    for name in ("compare", "evaluate", "export"):
        assert callable(getattr(transferlab, name)), name
    assert transferlab.export.__doc__.startswith("Write RUN/model.onnx")

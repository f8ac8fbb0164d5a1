"""Grad-CAM heatmaps: where the model looked, for every strategy, in predict --explain, and refused by ONNX."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import transferlab
from conftest import make_colour_run, write_colour_classes
from pointing_game import CLASSES, OBJECT, write_pointing_game, pointing_hits
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError

runner = CliRunner()
CHANCE = OBJECT**2 / 224**2  # a heatmap maximum placed at random lands in the box this often (8%)


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory):
    return make_colour_run(tmp_path_factory.mktemp("explain"))


def test_heatmap_points_at_the_object_that_decides_the_class(tmp_path):
    write_pointing_game(tmp_path / "train", 30, seed=0)
    boxes = write_pointing_game(tmp_path / "test", 10, seed=1)
    classifier = transferlab.train(tmp_path / "train", out=tmp_path / "run", epochs=15, lr=3e-3, quiet=True)
    explanations = classifier.explain(list(boxes))
    assert [e.predicted for e in explanations] == [p.parent.name for p in boxes]
    hits = pointing_hits(explanations, list(boxes.values()))
    # measured 93% on 60 images and 93% on 180 (bench/explain.py; the target is 90%, chance is 8%); with
    # one map per image, not shifted by half a cell, 60% and 81%
    assert np.mean(hits) >= 0.8, hits
    assert set(CLASSES) == set(classifier.classes)


def test_explanation_is_a_heatmap_over_the_image_the_network_saw(colour_run):
    classifier = transferlab.load(colour_run)
    image = next((colour_run.parent / "data" / "red").iterdir())
    (explanation,) = classifier.explain(image)
    assert explanation.image.shape == (224, 224, 3) and explanation.heatmap.shape == (224, 224)
    assert 0.0 <= explanation.heatmap.min() and explanation.heatmap.max() == pytest.approx(1.0)
    assert explanation.label == explanation.predicted == "red"
    assert explanation.overlay().size == (224, 224)
    assert "<img" in explanation._repr_html_()


def test_explain_target_explains_another_class_than_the_predicted_one(colour_run):
    classifier = transferlab.load(colour_run)
    image = next((colour_run.parent / "data" / "red").iterdir())
    (explanation,) = classifier.explain([image], target="blue")
    assert explanation.label == "blue" and explanation.predicted == "red"
    assert explanation.probability < 0.5
    with pytest.raises(TransferlabError, match="no class 'purple'"):
        classifier.explain([image], target="purple")


def test_explain_reports_an_unreadable_image_and_explains_the_others(colour_run, tmp_path):
    classifier = transferlab.load(colour_run)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    good = np.zeros((60, 80, 3), np.uint8)
    results = classifier.explain([broken, good])
    assert results[0].error and results[0].heatmap is None
    assert results[1].heatmap is not None


@pytest.mark.parametrize("strategy, options", [
    ("extract", {}),
    ("augment", {}),
    ("finetune", {"finetune": {"epochs": 1}}),
    ("scratch", {}),
])
def test_explain_works_for_every_strategy(tmp_path, strategy, options):
    data = write_colour_classes(tmp_path / "data", 6)
    classifier = transferlab.train(data, strategy=strategy, out=tmp_path / "run", epochs=1, quiet=True, **options)
    explanations = transferlab.load(tmp_path / "run").explain(sorted(data.rglob("*.jpg"))[:2])
    for explanation in explanations:
        assert explanation.heatmap.shape == explanation.image.shape[:2]
        assert np.isfinite(explanation.heatmap).all()
    assert classifier.explain(sorted(data.rglob("*.jpg"))[:1])[0].error is None


def test_combined_backbones_average_each_trunks_map(tmp_path):
    data = write_colour_classes(tmp_path / "data", 6)
    classifier = transferlab.train(data, backbone="efficientnet_lite0+efficientnet_lite1", out=tmp_path / "run",
                                   epochs=2, quiet=True)
    (explanation,) = classifier.explain(sorted(data.rglob("*.jpg"))[:1])
    assert explanation.heatmap.shape == (224, 224) and explanation.heatmap.max() == pytest.approx(1.0)


def test_predict_with_explain_writes_one_overlay_per_image(colour_run, tmp_path):
    images = sorted((colour_run.parent / "data" / "green").iterdir())[:3]
    result = runner.invoke(app, ["predict", str(colour_run), *map(str, images), "--explain", str(tmp_path / "heat")])
    assert result.exit_code == 0, result.output
    written = sorted((tmp_path / "heat").iterdir())
    assert [p.name for p in written] == sorted(f"{p.stem}.png" for p in images)
    assert Image.open(written[0]).size[0] == 2 * 224  # original | overlay


def test_explanations_with_the_onnx_model_say_they_need_pytorch(colour_run, tmp_path):
    from transferlab.deploy.onnx_predict import OnnxClassifier

    assert runner.invoke(app, ["export", str(colour_run)]).exit_code == 0
    image = next((colour_run.parent / "data" / "red").iterdir())
    result = runner.invoke(app, ["predict", str(colour_run), str(image), "--model", "onnx", "--explain", str(tmp_path)])
    assert isinstance(result.exception, TransferlabError) and "need the PyTorch model" in str(result.exception)
    with pytest.raises(TransferlabError, match="need the PyTorch model"):
        OnnxClassifier(colour_run).explain([image])


def test_report_shows_heatmaps_of_top_losses_and_correct_images(colour_run):
    index = json.loads((colour_run / "explanations" / "index.json").read_text())
    assert index["items"] and index["seconds"] >= 0
    assert {item["kind"] for item in index["items"]} <= {"top loss", "correct"}
    for item in index["items"]:
        assert (colour_run / "explanations" / item["file"]).is_file()
    report = (colour_run / "report.html").read_text()
    assert "Where the model looked" in report and report.count('class="card explanation"') == len(index["items"])


def test_explain_zero_writes_no_heatmaps(tmp_path):
    data = write_colour_classes(tmp_path / "data", 6)
    transferlab.train(data, out=tmp_path / "run", epochs=1, explain=0, quiet=True)
    assert not (tmp_path / "run" / "explanations").exists()
    assert "Where the model looked" not in (tmp_path / "run" / "report.html").read_text()
    with pytest.raises(TransferlabError):
        transferlab.train(data, out=tmp_path / "other", explain=-1, quiet=True)


def test_chosen_images_are_top_losses_at_most_half_then_correct_ones_per_class():
    from pathlib import Path

    from transferlab.runs.explanations import chosen_images
    from transferlab.runs.writer import TestPredictions

    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9], [0.4, 0.6], [0.95, 0.05]])
    test = TestPredictions([Path(f"{i}.jpg") for i in range(6)], labels, probabilities[None], ["a", "b"], Path("."))
    chosen = chosen_images(test, 4)
    assert chosen == [(5, "top loss"), (1, "top loss"), (0, "correct"), (3, "correct")]

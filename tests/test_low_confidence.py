"""Low confidence / out-of-distribution: a photo unlike the training images is flagged in predict, in the API's
Prediction and by the server; validation images mostly are not; older run folders predict without a flag."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from conftest import make_colour_run
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.numpy import load_file
from typer.testing import CliRunner

from transferlab.cli.app import app
from transferlab.model.confidence import REFERENCE_KEY, fit_confidence, reference_rows

runner = CliRunner()


def clusters(n: int, seed: int, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(centres)
    return centres[labels] + rng.normal(0, 0.3, (n, centres.shape[1])), labels


def confident(labels: np.ndarray, n_classes: int = 2) -> np.ndarray:
    probabilities = np.full((len(labels), n_classes), 0.05)
    probabilities[np.arange(len(labels)), labels] = 0.95
    return probabilities


def test_a_far_off_input_is_flagged_and_few_validation_inputs_are():
    centres = np.eye(16)[:2] * 5 + 1
    train, train_labels = clusters(300, 0, centres)
    val, val_labels = clusters(200, 1, centres)
    check = fit_confidence(train, train_labels, val, confident(val_labels))
    assert check.validation_flagged <= 0.03
    test, test_labels = clusters(200, 2, centres)
    flagged = [r is not None for r in check.assess(test, confident(test_labels))]
    assert np.mean(flagged) <= 0.05
    far = np.roll(centres, 5, axis=1)  # other directions in feature space: another domain
    reasons = check.assess(far, confident(np.array([0, 1])))
    assert all(r and r.startswith("far from the training images") for r in reasons)


def test_an_unusually_low_top_probability_is_flagged():
    centres = np.eye(8)[:2] * 5 + 1
    train, labels = clusters(100, 0, centres)
    check = fit_confidence(train, labels, *clusters(50, 1, centres)[:1], confident(np.arange(50) % 2))
    unsure = np.array([[0.55, 0.45]])
    assert "low probability (55.0% < 95.0%)" in check.assess(train[:1], unsure)[0]


def test_the_reference_set_is_capped_with_every_class_kept():
    labels = np.array([0] * 5000 + [1] * 50)
    rows = reference_rows(labels, limit=1000)
    assert len(rows) <= 1000 and set(labels[rows]) == {0, 1}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_colour_run(tmp_path_factory.mktemp("ood"), epochs=15)


@pytest.fixture(scope="module")
def cat(tmp_path_factory):
    skimage_data = pytest.importorskip("skimage.data")
    path = tmp_path_factory.mktemp("photos") / "cat.jpg"
    Image.fromarray(skimage_data.chelsea()).save(path)
    return path


def test_the_fitted_check_is_saved_with_the_model(run_dir):
    description = json.loads((run_dir / "model.json").read_text())["confidence"]
    assert description["method"] == "knn-cosine" and 0 < description["max_distance"] < 2
    reference = load_file(str(run_dir / "model.safetensors"))[REFERENCE_KEY]
    assert reference.dtype == np.float16 and reference.shape[0] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())["low_confidence"]
    assert 0 <= metrics["test_flagged"] <= 1 and metrics["validation_flagged"] == description["validation_flagged"]


def test_predict_flags_a_photo_far_from_the_training_images(run_dir, cat):
    red = run_dir.parent / "data" / "red" / "img_000.jpg"
    result = runner.invoke(app, ["predict", str(run_dir), str(cat), str(red), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {row["image"]: row for row in json.loads(result.stdout)}
    assert rows[str(cat)]["low_confidence"] is True
    assert "far from the training images" in rows[str(cat)]["low_confidence_reason"]
    assert rows[str(red)]["low_confidence"] is False and rows[str(red)]["low_confidence_reason"] is None


def test_predict_csv_and_table_show_the_flag(run_dir, cat):
    result = runner.invoke(app, ["predict", str(run_dir), str(cat), "--format", "csv", "--top-k", "1"])
    row = next(csv.DictReader(io.StringIO(result.stdout)))
    assert row["low_confidence"] == "true" and row["low_confidence_reason"].startswith("far from")
    table = runner.invoke(app, ["predict", str(run_dir), str(cat)], terminal_width=200)
    assert "low confidence" in table.stdout and "far from" in table.stdout


def test_the_python_api_prediction_carries_the_flag(run_dir, cat):
    import transferlab

    classifier = transferlab.load(run_dir)
    assert classifier.predict([cat])[0].low_confidence is True
    assert classifier.predict([Image.open(cat)])[0].low_confidence is True  # in memory, as the server predicts


def test_older_run_folders_without_a_fitted_check_predict_without_a_flag(run_dir, cat, tmp_path):
    old = shutil.copytree(run_dir, tmp_path / "old")
    description = json.loads((old / "model.json").read_text())
    del description["confidence"]
    (old / "model.json").write_text(json.dumps(description))
    result = runner.invoke(app, ["predict", str(old), str(cat), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["low_confidence"] is None
    table = runner.invoke(app, ["predict", str(old), str(cat)], terminal_width=200)
    assert table.exit_code == 0 and "check" not in table.stdout


def test_the_server_flags_a_photo_far_from_the_training_images(run_dir, cat):
    from transferlab.deploy.serve import create_app

    client = TestClient(create_app(run_dir), base_url="http://127.0.0.1:8000")
    answer = client.post("/api/predict", files={"file": ("cat.jpg", cat.read_bytes(), "image/jpeg")}).json()
    assert answer["low_confidence"] is True and answer["low_confidence_reason"].startswith("far from")
    red = (run_dir.parent / "data" / "red" / "img_001.jpg").read_bytes()
    assert client.post("/api/predict", files={"file": ("red.jpg", red, "image/jpeg")}).json()["low_confidence"] is False
    page_script = client.get("/static/app.js").text
    assert "low_confidence_reason" in page_script and 'el("doubt")' in page_script


@pytest.mark.integration
def test_on_ants_and_bees_a_cat_is_flagged_and_few_validation_images_are(shared, tmp_path, cat):
    import transferlab

    classifier = transferlab.train(shared / "datasets" / "hymenoptera", out=tmp_path / "run", quiet=True)
    flags = classifier.metrics["low_confidence"]
    assert flags["validation_flagged"] <= 0.05 and flags["test_flagged"] <= 0.05
    prediction = transferlab.load(tmp_path / "run").predict([cat])[0]
    assert prediction.low_confidence is True, prediction  # the cat answered "ants 91.1%" unflagged

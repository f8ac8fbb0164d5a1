"""What `predict` accepts (paths, folders, numpy arrays, bytes, PIL images) and how it reports what it cannot use:
a failed row beside the others, in the API, the CLI and the ONNX path alike."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import transferlab
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError
from transferlab.model.prediction import Prediction, predict_with_progress

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import make_colour_run

    return make_colour_run(tmp_path_factory.mktemp("inputs"))


@pytest.fixture(scope="module")
def clf(run_dir):
    return transferlab.load(run_dir)


@pytest.fixture(scope="module")
def exported(run_dir):
    transferlab.export(run_dir)  # the top-level callable
    from transferlab.deploy.onnx_predict import OnnxClassifier

    return OnnxClassifier(run_dir)


@pytest.fixture
def not_an_image(tmp_path):
    path = tmp_path / "not_an_image.jpg"
    path.write_text("hello, I am text")
    return path


def images_of(run_dir, colour):
    return sorted((run_dir.parent / "data" / colour).glob("*.jpg"))


def test_a_single_path_gives_a_list_of_one_prediction(clf, run_dir):
    image = images_of(run_dir, "red")[0]
    predictions = clf.predict(str(image))
    assert len(predictions) == 1 and predictions[0].label == "red" and predictions[0].source == str(image)
    assert clf.predict_proba(image).shape == (1, 3)


def test_a_folder_predicts_every_image_in_it(clf, run_dir):
    folder = run_dir.parent / "data" / "blue"
    predictions = clf.predict(folder, top_k=1)
    assert len(predictions) == 15 and {p.label for p in predictions} == {"blue"}


def test_arrays_bytes_and_pil_images_give_the_probabilities_of_the_file(clf, run_dir):
    path = images_of(run_dir, "green")[0]
    expected = clf.predict_proba([path])
    pixels = np.asarray(Image.open(path).convert("RGB"))
    for given in (pixels, [pixels], pixels[None], path.read_bytes(), Image.open(path)):
        np.testing.assert_allclose(clf.predict_proba(given), expected, atol=1e-5)
    assert [p.label for p in clf.predict([pixels, path.read_bytes(), Image.open(path)])] == ["green"] * 3


def test_predict_proba_returns_one_probability_row_per_image(clf, run_dir):
    paths = images_of(run_dir, "red")[:2] + images_of(run_dir, "blue")[:2]
    probabilities = clf.predict_proba(paths)
    assert isinstance(probabilities, np.ndarray) and probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert [clf.classes[i] for i in probabilities.argmax(axis=1)] == ["red", "red", "blue", "blue"]


def test_predict_proba_raises_on_a_failed_input_unless_asked_for_the_failures(clf, run_dir, not_an_image):
    good = images_of(run_dir, "red")[0]
    with pytest.raises(TransferlabError, match="return_failed=True") as error:
        clf.predict_proba([good, not_an_image])
    assert "not_an_image.jpg" in error.value.message
    probabilities, failed = clf.predict_proba([good, not_an_image, np.zeros((4, 4), np.float32)], return_failed=True)
    assert probabilities.shape == (1, 3)
    assert set(failed) == {str(not_an_image), "<array 2>"} and "uint8" in failed["<array 2>"]


def test_missing_and_non_image_files_become_failed_rows_beside_the_others(clf, run_dir, not_an_image, tmp_path):
    good = images_of(run_dir, "blue")[0]
    predictions = clf.predict([tmp_path / "missing.jpg", not_an_image, good, b"garbage"])
    assert [p.error is None for p in predictions] == [False, False, True, False]
    assert predictions[0].error == "file not found" and "not an image" in predictions[1].error
    assert predictions[2].label == "blue" and predictions[3].source == "<bytes 3>"


def test_a_lone_non_image_is_a_failed_row_not_a_crash(clf, not_an_image):
    (prediction,) = clf.predict(not_an_image)
    assert prediction.top == [] and "not an image" in prediction.error


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_cli_predict_prints_failed_rows_and_exits_1(run_dir, exported, not_an_image, tmp_path, runtime):
    alone = runner.invoke(app, ["predict", str(run_dir), str(not_an_image), "--model", runtime])
    assert alone.exit_code == 1 and "not an image" in alone.output and "Traceback" not in alone.output
    good = images_of(run_dir, "red")[0]
    args = ["predict", str(run_dir), str(tmp_path / "gone.jpg"), str(good), "--model", runtime, "--format", "json"]
    mixed = runner.invoke(app, args)
    rows = json.loads(mixed.stdout)
    assert mixed.exit_code == 1 and rows[0]["error"] == "file not found" and rows[1]["top"][0]["label"] == "red"


def test_onnx_predictor_takes_the_same_inputs(clf, exported, run_dir):
    path = images_of(run_dir, "green")[1]
    pixels = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_allclose(exported.predict_proba([path, pixels, path.read_bytes()]),
                               np.repeat(clf.predict_proba(path), 3, axis=0), atol=1e-4)
    probabilities, failed = exported.predict_proba([path, "nowhere.png"], return_failed=True)
    assert probabilities.shape == (1, 3) and failed == {"nowhere.png": "file not found"}


@pytest.fixture
def linked_classes(run_dir, tmp_path) -> Path:
    """A folder of links to the run's red/, green/ and blue/ class folders (45 images), as `train` accepts it."""
    folder = tmp_path / "linked"
    folder.mkdir()
    for colour in ("red", "green", "blue"):
        (folder / colour).symlink_to(run_dir.parent / "data" / colour, target_is_directory=True)
    return folder


def test_predict_follows_linked_class_folders(clf, linked_classes):
    predictions = clf.predict(linked_classes, top_k=1)
    assert len(predictions) == 45 and not any(p.error for p in predictions)
    assert sorted(Path(p.source).parent.name for p in predictions) == sorted(["blue", "green", "red"] * 15)


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_cli_predict_follows_linked_class_folders(run_dir, exported, linked_classes, runtime):
    result = runner.invoke(app, ["predict", str(run_dir), str(linked_classes), "--runtime", runtime, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 45 and {row["image"] for row in rows} == {str(p) for p in linked_classes.glob("*/*.jpg")}


def test_predict_walks_a_link_loop_once(clf, run_dir, tmp_path):
    folder = tmp_path / "looped"
    shutil.copytree(run_dir.parent / "data" / "red", folder)
    os.symlink(".", folder / "self")  # each image would otherwise appear again at every depth, without end
    os.symlink(folder, folder / "again")
    predictions = clf.predict(folder, top_k=1)
    assert sorted(p.source for p in predictions) == sorted(str(p) for p in folder.glob("*.jpg"))


def with_a_fourth_class(run, file: str):
    """A copy of the run whose class list in `file` names a class the network has no output for."""
    if file == "labels.txt":
        (run / file).write_text("red\ngreen\nblue\npurple\n")
        return
    key = "labels" if file == "model.onnx.json" else "classes"
    description = json.loads((run / file).read_text())
    description[key].append("purple")
    (run / file).write_text(json.dumps(description))


@pytest.mark.parametrize("file", ["labels.txt", "model.json"])
def test_a_class_list_the_network_disagrees_with_is_refused_on_loading(run_dir, tmp_path, file):
    run = shutil.copytree(run_dir, tmp_path / "run")
    with_a_fourth_class(run, file)
    with pytest.raises(TransferlabError, match=f"{file} lists 4 classes but model.safetensors has 3 outputs"):
        transferlab.load(run)
    image = images_of(run_dir, "red")[0]
    result = runner.invoke(app, ["predict", str(run), str(image), "--runtime", "torch", "--top-k", "4"])
    assert isinstance(result.exception, TransferlabError) and f"{file} lists 4" in result.exception.message  # main() prints it


def test_an_exported_label_list_the_network_disagrees_with_is_refused_on_loading(run_dir, exported, tmp_path):
    from transferlab.deploy.onnx_predict import OnnxClassifier

    run = shutil.copytree(run_dir, tmp_path / "run")
    with_a_fourth_class(run, "model.onnx.json")
    with pytest.raises(TransferlabError, match="model.onnx.json lists 4 classes but model.onnx has 3 outputs"):
        OnnxClassifier(run)


class CountingModel:
    """Stands in for a classifier: records the chunk sizes it was asked to predict."""

    def __init__(self):
        self.calls = []

    def predict(self, images, top_k=5):
        self.calls.append(len(images))
        return [Prediction(str(i), [("a", 1.0)]) for i in images]


def test_predict_shows_a_progress_bar_on_stderr_for_many_images(capsys):
    model = CountingModel()
    predictions = predict_with_progress(model, [f"{i}.jpg" for i in range(300)], top_k=1)
    captured = capsys.readouterr()
    assert len(predictions) == 300 and model.calls == [64, 64, 64, 64, 44]
    assert "predicting" in captured.err and "300/300" in captured.err and captured.out == ""
    few = CountingModel()
    predict_with_progress(few, ["a.jpg"] * 5, top_k=1)
    assert few.calls == [5] and capsys.readouterr().err == ""  # a handful: no bar

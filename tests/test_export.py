"""`transferlab export` and `transferlab.deploy.onnx_predict`: ONNX graphs that agree with PyTorch, int8, no torch needed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_colour_run
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

import transferlab
from transferlab.backbones.registry import get_spec, preprocess
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError
from transferlab.deploy.export import export_run, report_table
from transferlab.deploy.onnx_predict import OnnxClassifier

runner = CliRunner()
TOLERANCE = 1e-4  # max |p_torch - p_onnx| on probabilities


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A small trained run, exported to float and int8 ONNX (timed briefly: the speed itself is not tested)."""
    run = make_colour_run(tmp_path_factory.mktemp("export"), epochs=5)
    export_run(run, quantize="int8", timing_seconds=0.2)
    return run


def images_of(run_dir, name: str, n: int = 4) -> list:
    return sorted((run_dir.parent / "data" / name).glob("*.jpg"))[:n]


def torch_probabilities(run_dir, arrays: np.ndarray) -> np.ndarray:
    network = transferlab.load(run_dir).network()
    with torch.inference_mode():
        return torch.softmax(network(torch.from_numpy(arrays)), dim=1).numpy()


def test_export_writes_model_metadata_and_comparison(run_dir):
    metadata = json.loads((run_dir / "model.onnx.json").read_text())
    report = json.loads((run_dir / "export.json").read_text())
    assert metadata["labels"] == (run_dir / "labels.txt").read_text().split()
    assert metadata["input"] == {"name": "images", "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
                                 "shape": ["batch", 3, 224, 224]}
    assert metadata["preprocessing"]["resize_size"] == get_spec("efficientnet_lite0").resize_size
    assert set(report["models"]) == {"float32", "int8"}
    assert report["torch_max_abs_diff"] < TOLERANCE
    assert (run_dir / "model.int8.onnx").stat().st_size < 0.5 * (run_dir / "model.onnx").stat().st_size


def test_onnx_and_pytorch_probabilities_agree(run_dir):
    model = OnnxClassifier(run_dir)
    arrays = np.stack([model.prepare(path) for path in images_of(run_dir, "red") + images_of(run_dir, "blue")])
    difference = np.abs(model.run(arrays) - torch_probabilities(run_dir, arrays)).max()
    assert difference < TOLERANCE


def test_onnx_pipeline_predicts_like_the_classifier_on_files(run_dir):
    paths = images_of(run_dir, "green") + images_of(run_dir, "red")
    expected = transferlab.load(run_dir).predict_proba(paths)
    assert np.abs(OnnxClassifier(run_dir).predict_proba(paths) - expected).max() < TOLERANCE


@pytest.mark.parametrize("size", [(300, 200), (123, 457), (224, 224), (50, 61), (257, 256)])
def test_onnx_preprocessing_matches_the_training_preprocessing(run_dir, size):
    pixels = np.random.default_rng(sum(size)).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    expected = preprocess(image, get_spec("efficientnet_lite0")).transpose(2, 0, 1)
    np.testing.assert_array_equal(OnnxClassifier(run_dir).prepare(image), expected)


def test_int8_model_keeps_accuracy_and_reports_speedup(run_dir):
    report = json.loads((run_dir / "export.json").read_text())
    float32, int8 = report["models"]["float32"], report["models"]["int8"]
    assert float32["test_accuracy"] == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["test_accuracy"])
    assert int8["test_accuracy"] >= float32["test_accuracy"] - 0.15
    assert report["int8_speedup"] > 0 and int8["latency_ms"] > 0
    predictions = OnnxClassifier(run_dir / "model.int8.onnx").predict(images_of(run_dir, "blue"), top_k=1)
    assert [p.label for p in predictions] == ["blue"] * 4


def test_export_table_compares_float_and_int8(run_dir):
    console = Console(width=160, record=True)
    console.print(report_table(json.loads((run_dir / "export.json").read_text())))
    text = console.export_text()
    assert "model.int8.onnx" in text and "speed-up" in text and "100.0%" in text


def test_export_command_rejects_an_unknown_format(run_dir):
    result = runner.invoke(app, ["export", str(run_dir), "--format", "tflite"])
    assert isinstance(result.exception, TransferlabError) and "--format onnx" in result.exception.hint


def test_predict_reports_an_undecodable_file_and_goes_on(run_dir, tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_text("not an image")
    good = images_of(run_dir, "green", 1)[0]
    predictions = OnnxClassifier(run_dir).predict([bad, good], top_k=2)
    assert predictions[0].error and predictions[0].top == []
    assert predictions[1].label == "green" and len(predictions[1].top) == 2


def test_missing_export_explains_how_to_make_one(tmp_path):
    with pytest.raises(TransferlabError) as caught:
        OnnxClassifier(tmp_path)
    assert "transferlab export" in caught.value.hint


def test_quantizing_without_the_training_images_explains_why(run_dir, tmp_path):
    copy = shutil.copytree(run_dir, tmp_path / "run")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "data": str(tmp_path / "gone")}))
    with pytest.raises(TransferlabError, match="needs the run's training images"):
        export_run(copy, quantize="int8")


def test_unknown_quantization_is_rejected(run_dir):
    with pytest.raises(TransferlabError, match="unknown quantization"):
        export_run(run_dir, quantize="int4")


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run python code in a fresh interpreter where importing torch or timm fails, as if not installed."""
    blocker = (
        "import sys\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ('torch', 'timm'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r} (blocked)')\n"
        "sys.meta_path.insert(0, Blocker())\n"
    )
    return subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=60)


def output_without_torch(code: str) -> str:
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_onnx_prediction_needs_no_torch(run_dir):
    image = images_of(run_dir, "red", 1)[0]
    assert output_without_torch(
        "from transferlab.deploy.onnx_predict import OnnxClassifier\n"
        f"print(OnnxClassifier({str(run_dir)!r}).predict([{str(image)!r}])[0].label)\n"
        "assert not any(m.partition('.')[0] in ('torch', 'timm') for m in sys.modules)\n"
    ).strip() == "red"


def test_cli_predict_falls_back_to_onnx_when_torch_is_missing(run_dir):
    image = images_of(run_dir, "blue", 1)[0]
    printed = output_without_torch(
        "from transferlab.cli.app import main\n"
        f"sys.argv = ['transferlab', 'predict', {str(run_dir)!r}, {str(image)!r}, '--format', 'json']\n"
        "main()\n"
    )
    assert json.loads(printed)[0]["top"][0]["label"] == "blue"


@pytest.mark.integration
def test_onnx_and_pytorch_agree_on_real_photos(run_dir, shared):
    photos = sorted((shared / "datasets" / "hymenoptera" / "val" / "ants").glob("*.jpg"))[:4]
    photos += sorted((shared / "datasets" / "hymenoptera" / "val" / "bees").glob("*.jpg"))[:4]
    model = OnnxClassifier(run_dir)
    arrays = np.stack([model.prepare(path) for path in photos])
    assert np.abs(model.run(arrays) - torch_probabilities(run_dir, arrays)).max() < TOLERANCE
    expected = transferlab.load(run_dir).predict_proba(photos)
    assert np.abs(model.predict_proba(photos) - expected).max() < TOLERANCE


def test_combined_backbones_export_one_input_per_backbone_and_agree_with_torch(colour_folder, tmp_path):
    classifier = transferlab.train(colour_folder, backbone="efficientnet_lite0+efficientnet_lite1", out=tmp_path / "run",
                                   epochs=10, lr=3e-3, quiet=True)
    export_run(tmp_path / "run")
    metadata = json.loads((tmp_path / "run" / "model.onnx.json").read_text())
    assert [(i["name"], i["preprocessing"]["input_size"]) for i in metadata["inputs"]] == [("images_0", 224),
                                                                                            ("images_1", 240)]
    images = sorted((colour_folder / "green").glob("*.jpg"))[:4]
    onnx = OnnxClassifier(tmp_path / "run")
    np.testing.assert_allclose(onnx.predict_proba(images), classifier.predict_proba(images), atol=1e-4)
    assert {p.top[0][0] for p in onnx.predict(images, top_k=1)} == {"green"}


def odd_format_images(folder) -> dict:
    """One file per odd mode a user's folder may hold."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 1, 80 * 60, dtype=np.float32).reshape(60, 80)
    rgb = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    files = {
        "png16.png": Image.fromarray((gradient * 65535).astype(np.uint16)),
        "float.tif": Image.fromarray(gradient, mode="F"),
        "cmyk.jpg": Image.fromarray(rgb).convert("CMYK"),
        "palette.png": Image.fromarray(rgb).convert("P"),
        "la.png": Image.fromarray(rgb).convert("LA"),
        "rgba.png": Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (60, 80), dtype=np.uint8)])),
        "bilevel.png": Image.fromarray(rgb).convert("1"),
        "gray.jpg": Image.fromarray(rgb).convert("L"),
    }
    paths = {}
    for name, image in files.items():
        paths[name] = folder / name
        if name == "palette.png":
            image.info["transparency"] = 0
        image.save(paths[name])
    rotated = Image.fromarray(rgb)
    exif = rotated.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise
    paths["exif_rotated.jpg"] = folder / "exif_rotated.jpg"
    rotated.save(paths["exif_rotated.jpg"], exif=exif)
    paths["too_large.png"] = folder / "too_large.png"
    Image.new("1", (12000, 11000)).save(paths["too_large.png"])  # 132 megapixels, above the limit
    return paths


def test_onnx_and_torch_paths_decode_odd_formats_identically(run_dir, tmp_path):
    onnx = OnnxClassifier(run_dir)
    extractor = transferlab.load(run_dir).extractor
    for name, path in odd_format_images(tmp_path).items():
        if name == "too_large.png":
            for prepare in (onnx.prepare, extractor.prepare):
                with pytest.raises(TransferlabError, match="image too large"):
                    prepare(path)
            continue
        np.testing.assert_array_equal(onnx.prepare(path), extractor.prepare(path).transpose(2, 0, 1), err_msg=name)
        assert onnx.prepare(path).mean() > 5, name  # not all black (a float or 16-bit image read as zeros)
        assert onnx.prepare(path).mean() < 250, name  # not all white (a 16-bit image clipped)

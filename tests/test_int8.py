"""--precision int8: the frozen trunk quantised by ONNX Runtime, calibrated on training images, cached, recorded."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import transferlab
from transferlab.core.errors import TransferlabError
from transferlab.deploy.export import export_run
from transferlab.deploy.onnx_predict import OnnxClassifier
from transferlab.features.extractor import FeatureExtractor, quantized_trunk_name
from transferlab.features.quantize import LEGACY_SETTINGS, SETTINGS
from transferlab.features.runtimes import check_precision, verified
from transferlab.model import classifier as classifier_module


def int8_extractor(cache, **options) -> FeatureExtractor:
    return FeatureExtractor("efficientnet_lite0", runtime="onnx", device="cpu", precision="int8", cache_dir=cache,
                            quiet=True, **options)


@pytest.fixture(scope="module")
def photos(shared):
    """Real photos: ants and bees, 12 of each for calibration and 12 of each to compare features on."""
    root = shared / "datasets" / "hymenoptera" / "train"
    ants, bees = (sorted((root / name).glob("*.jpg"))[:24] for name in ("ants", "bees"))
    return {"calibration": ants[:12] + bees[:12], "other": ants[12:] + bees[12:]}


@pytest.fixture(scope="module")
def quantised(photos, tmp_path_factory):
    """A cache with the int8 trunk built once (calibrated on the calibration photos) and its first extractor."""
    cache = tmp_path_factory.mktemp("int8-cache")
    extractor = int8_extractor(cache)
    extractor.calibrate_on(photos["calibration"])
    result = extractor.extract(photos["other"])
    return cache, extractor, result


def test_int8_trunk_is_quantised_and_cached_beside_the_float_trunk(quantised):
    cache, extractor, result = quantised
    assert extractor.runner.calibrated  # this extractor quantised it
    assert verified(extractor.quantized_path()) and verified(extractor.onnx_path())  # digest sidecars written
    assert extractor.quantized_path().parent == extractor.onnx_path().parent
    assert extractor.quantized_path().stat().st_size < extractor.onnx_path().stat().st_size / 2  # int8 weights
    assert result.kept.all() and result.cache_hits == 0


def test_a_second_run_reuses_the_int8_trunk_without_recalibrating(quantised, photos):
    cache, first, first_result = quantised
    modified = first.quantized_path().stat().st_mtime_ns
    again = int8_extractor(cache)
    again.calibrate_on(list(reversed(photos["calibration"])))  # same images, another order: same calibration
    assert again.key == first.key
    again.runner.session()
    assert not again.runner.calibrated and first.quantized_path().stat().st_mtime_ns == modified
    fresh = int8_extractor(cache, use_cache=False)  # computed again, not read from the feature cache
    fresh.calibrate_on(photos["calibration"])
    np.testing.assert_array_equal(fresh.extract(photos["other"]).features, first_result.features)


def test_a_damaged_int8_trunk_is_quantised_again(quantised, photos, tmp_path, capsys):
    cache, first, _ = quantised
    copy = tmp_path / "cache"
    (copy / "onnx").mkdir(parents=True)
    for path in (first.onnx_path(), first.quantized_path()):
        for file in (path, path.with_name(path.name + ".blake2b")):
            (copy / "onnx" / file.name).write_bytes(file.read_bytes())
    damaged = int8_extractor(copy)
    damaged.calibrate_on(photos["calibration"])
    with open(damaged.quantized_path(), "r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00" * 16)
    damaged.runner.session()
    assert "int8 trunk" in capsys.readouterr().err  # said why it quantises again
    assert damaged.runner.calibrated and verified(damaged.quantized_path())


def test_int8_features_are_close_to_float_features_on_real_photos(quantised, photos):
    cache, _, int8 = quantised
    float32 = FeatureExtractor("efficientnet_lite0", runtime="onnx", device="cpu", cache_dir=cache, quiet=True)
    reference = float32.extract(photos["other"]).features
    cosine = (reference * int8.features).sum(1) / np.linalg.norm(reference, axis=1) / np.linalg.norm(int8.features, axis=1)
    assert cosine.mean() > 0.98, cosine
    assert not np.array_equal(reference, int8.features)  # quantised indeed


def largest_weights(path) -> dict[str, int]:
    """The largest |quantised weight| of a QDQ graph's depthwise convolutions and of its other convolutions."""
    model = onnx.load(str(path))
    initializers = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    dequantized = {node.output[0]: initializers[node.input[0]] for node in model.graph.node
                   if node.op_type == "DequantizeLinear" and node.input[0] in initializers}
    largest = {"depthwise": 0, "other": 0}
    for node in model.graph.node:
        if node.op_type == "Conv" and node.input[1] in dequantized:
            weights = dequantized[node.input[1]]
            group = next((attribute.i for attribute in node.attribute if attribute.name == "group"), 1)
            kind = "depthwise" if group > 1 and weights.shape[:2] == (group, 1) else "other"
            largest[kind] = max(largest[kind], int(np.abs(weights.astype(np.int32)).max()))
    return largest


def test_int8_trunk_weights_cannot_saturate_the_int16_sums_of_cpus_without_vnni(quantised):
    """The check that holds on every CPU: on one with VNNI, saturating weights would pass the cosine test above."""
    _, extractor, _ = quantised
    largest = largest_weights(extractor.quantized_path())
    assert largest["other"] <= 64  # 7 bits: 255 * 64 * 2 fits the int16 sum of a uint8 x int8 pair
    assert largest["depthwise"] > 64  # 8 bits where ONNX Runtime's kernel multiplies in 32 bits


def test_int8_trunks_of_other_quantisation_settings_are_neither_reused_nor_made(quantised, photos):
    cache, current, _ = quantised
    legacy = int8_extractor(cache, quantization=LEGACY_SETTINGS)
    legacy.calibrate_on(photos["calibration"])
    assert current.quantization == SETTINGS
    assert legacy.key != current.key and legacy.quantized_path() != current.quantized_path()
    with pytest.raises(TransferlabError, match=f"quantised with {SETTINGS} now"):
        legacy.runner.session()  # not made under a key that names other settings
    assert not legacy.quantized_path().exists()


def test_int8_and_float_features_have_different_cache_keys(quantised, photos):
    cache, int8, _ = quantised
    float32 = FeatureExtractor("efficientnet_lite0", runtime="onnx", device="cpu", cache_dir=cache, quiet=True)
    assert int8.key != float32.key and int8.cache.path != float32.cache.path
    assert int8.float_key == float32.key  # the float trunk and its features are shared, unchanged
    other = int8_extractor(cache)
    other.calibrate_on(photos["other"])  # other calibration images: another trunk, other features
    assert other.key not in (int8.key, float32.key)


def test_int8_with_the_torch_runtime_is_a_clear_error(colour_folder):
    with pytest.raises(TransferlabError, match="int8 runs on ONNX Runtime only"):
        check_precision("int8", runtime="torch")
    with pytest.raises(TransferlabError, match="int8 runs on ONNX Runtime only"):
        FeatureExtractor(runtime="torch", device="cpu", precision="int8")
    result = subprocess.run(
        [sys.executable, "-m", "transferlab", "train", str(colour_folder), "--runtime", "torch", "--precision", "int8"],
        capture_output=True, text=True,
    )
    assert result.returncode != 0 and "int8 runs on ONNX Runtime only" in result.stderr
    assert "Traceback" not in result.stderr


def test_int8_is_refused_for_strategies_that_train_the_backbone(colour_folder):
    with pytest.raises(TransferlabError, match="not strategy 'finetune'"):
        transferlab.train(colour_folder, strategy="finetune", trunk={"precision": "int8"}, quiet=True)
    with pytest.raises(TransferlabError, match="unknown precision 'int4'"):
        transferlab.train(colour_folder, trunk={"precision": "int4"}, quiet=True)


@pytest.fixture(scope="module")
def int8_run(shared, tmp_path_factory):
    run = tmp_path_factory.mktemp("int8-run") / "run"
    classifier = transferlab.train(
        shared / "datasets" / "hymenoptera", trunk={"precision": "int8", "runtime": "onnx"}, device="cpu",
        split={"max_per_class": 20}, epochs=8, out=run, quiet=True,
    )
    return classifier, run


def test_train_with_int8_then_predict_elsewhere_and_export_use_the_runs_int8_trunk(int8_run, shared, tmp_path):
    classifier, run = int8_run
    assert json.loads((run / "config.json").read_text())["precision"] == "int8"
    model = json.loads((run / "model.json").read_text())
    assert model["precision"] == "int8" and model["calibration"] and model["quantization"] == SETTINGS
    assert verified(run / quantized_trunk_name("efficientnet_lite0"))
    with open(run / "test_predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    # another machine: an empty cache, and no training images to calibrate on; the run's own int8 trunk serves
    loaded = transferlab.load(run, cache_dir=tmp_path / "elsewhere")
    predictions = loaded.predict([shared / "datasets" / "hymenoptera" / row["path"] for row in rows], top_k=1)
    assert [p.top[0][0] for p in predictions] == [row["predicted"] for row in rows]
    np.testing.assert_allclose([p.top[0][1] for p in predictions], [float(r["p_predicted"]) for r in rows], atol=1e-5)
    assert not loaded.extractor.runner.calibrated
    assert classifier.metrics["test_accuracy"] > 0.6
    # the ONNX export holds the int8 trunk under the head, so it predicts what the run predicts
    report = export_run(run, timing_seconds=0.2)
    assert report["trunk_precision"] == "int8" and list(report["models"]) == ["int8 trunk"]
    assert report["trunk_quantization"] == SETTINGS
    assert report["torch_max_abs_diff"] < 1e-4
    exported = OnnxClassifier(run).predict([shared / "datasets" / "hymenoptera" / row["path"] for row in rows], top_k=1)
    assert [p.top[0][0] for p in exported] == [row["predicted"] for row in rows]
    with pytest.raises(TransferlabError, match="int8 trunk already"):
        export_run(run, quantize="int8")


def test_a_run_with_an_8_bit_int8_trunk_warns_on_a_cpu_without_vnni_and_still_uses_it(
    int8_run, shared, tmp_path, monkeypatch, capsys,
):
    _, run = int8_run
    legacy = tmp_path / "legacy"
    shutil.copytree(run, legacy)
    model = json.loads((legacy / "model.json").read_text())
    del model["quantization"]  # as written before 7-bit weights
    (legacy / "model.json").write_text(json.dumps(model))
    monkeypatch.setattr(classifier_module, "saturates_8bit_weights_here", lambda: True)
    capsys.readouterr()
    loaded = transferlab.load(legacy, cache_dir=tmp_path / "elsewhere")
    assert "8-bit weights, which saturate on this CPU" in capsys.readouterr().err
    assert loaded.extractor.quantization == LEGACY_SETTINGS
    image = next((shared / "datasets" / "hymenoptera" / "val" / "ants").glob("*.jpg"))
    assert loaded.predict([image])[0].top  # the run's own trunk, restored under its legacy key
    assert not loaded.extractor.runner.calibrated
    transferlab.load(run, cache_dir=tmp_path / "elsewhere")
    assert "warning" not in capsys.readouterr().err  # a trunk with 7-bit weights: nothing to say


def test_compare_refuses_an_unknown_precision_before_any_work(colour_folder, tmp_path):
    with pytest.raises(TransferlabError, match="unknown precision 'int4'"):
        transferlab.compare(colour_folder, trunk={"precision": "int4"}, out=tmp_path / "compare", quiet=True)
    assert not (tmp_path / "compare").exists()

"""Export a run to ONNX (RUN/model.onnx + model.onnx.json), optionally quantized to int8 (model.int8.onnx).

The graph takes uint8 RGB images [N, 3, H, W] at the backbone's input size (the same layout as
`Classifier.network()` and the feature extractor's graphs) and returns softmax probabilities [N, C];
resizing and cropping stay outside (`transferlab.deploy.onnx_predict` does them with Pillow).
int8 uses ONNX Runtime's static QDQ quantization, per channel, calibrated on training images; the float
and int8 models are then compared on the run's test split (accuracy) and timed on this CPU.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.table import Table

from transferlab.backbones.trunk import export_onnx, input_names
from transferlab.core.device import device_of
from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_path, atomic_write_bytes
from transferlab.data.dataset import DatasetSplit, Subset, load_dataset
from transferlab.deploy.onnx_predict import (
    MODEL_FILE,
    ONNX_FORMAT,
    OnnxClassifier,
    metadata_path,
)
from transferlab.features.combined import CombinedExtractor
from transferlab.features.quantize import DESCRIPTION, SETTINGS
from transferlab.model.classifier import Classifier

INT8_FILE = "model.int8.onnx"
QUANTIZATIONS = ("int8",)
CALIBRATION_IMAGES = 100
EVALUATION_IMAGES = 500  # test images scored per model; enough for accuracy to 1-2 points
TIMING_BATCH = 16


def export_run(
    run: str | Path | Classifier,
    *,
    quantize: str | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    timing_seconds: float = 2.0,
    seed: int = 0,
) -> dict:
    """Write RUN/model.onnx (+ model.int8.onnx with quantize="int8") and RUN/export.json; return its content.
    `run` is a run folder or a Classifier that has one (`transferlab.export(clf)`)."""
    if isinstance(run, Classifier):
        if run.run_dir is None:
            raise TransferlabError("this classifier has no run folder to export", hint="train it with out=FOLDER, or save it")
        run = run.run_dir
    run = Path(run)
    if quantize not in (None, *QUANTIZATIONS):
        raise TransferlabError(f"unknown quantization {quantize!r}", hint="use --quantize int8, or leave it out")
    classifier = Classifier.load(run)
    trunk_int8 = classifier.extractor.precision == "int8"
    if trunk_int8 and quantize:
        raise TransferlabError("this run was trained on int8 features: model.onnx holds its int8 trunk already",
                               hint="export without --quantize")
    dataset = run_dataset(run, required=quantize is not None)  # before exporting: fail fast without the images
    float_path = export_float(classifier, run / MODEL_FILE)
    models = {"int8 trunk" if trunk_int8 else "float32": float_path}
    if quantize == "int8":
        models["int8"] = quantize_int8(float_path, calibration_batch(float_path, dataset.train, calibration_images, seed))
    report = {"format": "onnx", "trunk_precision": classifier.extractor.precision, "models": {}}
    if trunk_int8:  # the run's own int8 trunk, whatever settings it was made with
        report["trunk_quantization"] = classifier.extractor.quantization
    test = dataset.test if dataset is not None else None
    for name, path in models.items():
        report["models"][name] = {"file": path.name, "megabytes": round(path.stat().st_size / 1e6, 2),
                                  **measure(path, test, timing_seconds)}
    report["torch_max_abs_diff"] = torch_agreement(classifier, float_path, test)
    if "int8" in models:
        float_rate = report["models"]["float32"]["images_per_second"]
        report["int8_speedup"] = round(report["models"]["int8"]["images_per_second"] / float_rate, 2)
        report["quantization"] = {"method": DESCRIPTION, "settings": SETTINGS,
                                  "calibration_images": min(calibration_images, len(dataset.train))}
    atomic_write_bytes(run / "export.json", (json.dumps(report, indent=2) + "\n").encode())
    return report


def export_float(classifier: Classifier, path: Path) -> Path:
    """The whole classifier with softmax as one ONNX graph, plus the .json with labels and preprocessing.

    A run trained on int8 features gets its int8 trunk in the graph: the head was fitted to that trunk's features,
    so the export predicts what the run predicts (a float trunk under it gave other probabilities)."""
    if classifier.extractor.precision == "int8":
        int8_trunk_network(classifier, path)
    else:
        export_onnx(classifier.network(probabilities=True), classifier.extractor.input_sizes, path, "probabilities")
    write_metadata(path, classifier)
    return path


def int8_trunk_network(classifier: Classifier, path: Path) -> Path:
    """The run's int8 trunk (images -> features) and its head with softmax (features -> probabilities) merged
    into one graph."""
    import onnx
    from onnx import compose

    extractor = classifier.extractor
    if isinstance(extractor, CombinedExtractor):
        raise TransferlabError("exporting a combination of int8 trunks is not supported yet",
                               hint="train the combination with --precision float32 to export it")
    extractor.runner.session()  # the int8 trunk is in the cache (restored from the run folder if need be)
    trunk = onnx.load(str(extractor.quantized_path()))
    opset = next(o.version for o in trunk.opset_import if o.domain in ("", "ai.onnx"))
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        head_path = Path(scratch) / "head.onnx"
        head = torch.nn.Sequential(classifier.head.eval(), torch.nn.Softmax(dim=1))
        dummy = torch.zeros((2, classifier.head_config.in_features), dtype=torch.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated but exports a head reliably
            torch.onnx.export(head, (dummy,), str(head_path), input_names=["features"], output_names=["probabilities"],
                              dynamic_axes={"features": {0: "batch"}, "probabilities": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        head_model = onnx.load(str(head_path))
    head_model.ir_version = trunk.ir_version
    merged = compose.merge_models(trunk, head_model, io_map=[("features", "features")], prefix2="head/")
    for node in merged.graph.node:  # the prefix would rename the output readers look for
        node.output[:] = ["probabilities" if name == "head/probabilities" else name for name in node.output]
    merged.graph.output[0].name = "probabilities"
    with atomic_path(path, extractor.quantized_path().stat().st_size) as tmp:
        onnx.save(merged, str(tmp))
    return path


def write_metadata(path: Path, classifier: Classifier) -> Path:
    """model.onnx.json: labels and, for each image input of the graph, how to prepare it."""
    described = classifier.extractor.preprocessing()
    preprocessing = described if isinstance(described, list) else [described]
    inputs = [
        {"name": name, "dtype": "uint8", "layout": "NCHW", "channels": "RGB",
         "shape": ["batch", 3, step["input_size"], step["input_size"]],
         "preprocessing": {
             **{key: step[key] for key in ("resize_size", "input_size", "interpolation", "mean", "std")},
             "steps": "shorter side to resize_size, centre crop input_size; mean/std normalisation is in the graph",
         }}
        for name, step in zip(input_names(len(preprocessing)), preprocessing)
    ]
    metadata = {
        "format": ONNX_FORMAT,
        "inputs": inputs,
        # the first input and its preprocessing where readers of one-input models expect them
        "input": {key: value for key, value in inputs[0].items() if key != "preprocessing"},
        "preprocessing": inputs[0]["preprocessing"],
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(classifier.classes)]},
        "labels": classifier.classes,
        "backbone": classifier.backbone,
        "strategy": classifier.strategy,
    }
    out = metadata_path(path)
    atomic_write_bytes(out, (json.dumps(metadata, indent=2) + "\n").encode())
    return out


def run_dataset(run: Path, *, required: bool) -> DatasetSplit | None:
    """The run's split (split.csv + the data folder in config.json); None if the images are gone and not required."""
    try:
        config = json.loads((run / "config.json").read_text())
        return load_dataset(config["data"], split_csv=run / "split.csv")
    except (OSError, KeyError, ValueError, TransferlabError) as exc:
        if not required:
            return None
        reason = exc.message if isinstance(exc, TransferlabError) else f"{type(exc).__name__}: {exc}"
        raise TransferlabError(
            f"int8 quantization needs the run's training images, which could not be read: {reason}",
            hint="run export where the data folder recorded in config.json exists, or export without --quantize",
        ) from exc


def prepared_images(
    model: OnnxClassifier, subset: Subset, limit: int, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray]:
    """uint8 [n, 3, H, W] per graph input and labels for up to `limit` images of subset (a seeded sample;
    undecodable ones dropped)."""
    order = np.random.default_rng(seed).permutation(len(subset))[:limit]
    prepared, labels = [], []
    for i in sorted(order):
        try:
            prepared.append(model.prepare_inputs(subset.paths[i]))
            labels.append(int(subset.labels[i]))
        except TransferlabError:
            continue
    if not prepared:
        raise TransferlabError("none of the run's images could be decoded", hint="check the data folder")
    return model.stack(prepared), np.asarray(labels)


def calibration_batch(float_path: Path, train: Subset, limit: int, seed: int) -> dict[str, np.ndarray]:
    model = OnnxClassifier(float_path)
    return model.feeds(prepared_images(model, train, limit, seed)[0])


def quantize_int8(float_path: Path, calibration: dict[str, np.ndarray]) -> Path:
    """Static QDQ quantization (per-channel weights): the int8 kernels convnets gain most from on CPU."""
    from transferlab.features.quantize import quantize_int8 as quantize

    n = len(next(iter(calibration.values())))
    batches = ({name: array[start : start + 8] for name, array in calibration.items()} for start in range(0, n, 8))
    out = float_path.with_name(INT8_FILE)
    quantize(float_path, out, batches)
    metadata_path(out).write_bytes(metadata_path(float_path).read_bytes())
    return out


def measure(path: Path, test: Subset | None, timing_seconds: float) -> dict:
    """Test accuracy (when the test images are here) and CPU speed of one exported model."""
    model = OnnxClassifier(path)
    result: dict = {"test_accuracy": None, "n_test": 0}
    if test is not None and len(test):
        images, labels = prepared_images(model, test, EVALUATION_IMAGES)
        result.update(test_accuracy=round(float((model.run(images).argmax(1) == labels).mean()), 4), n_test=len(labels))
    result.update(timing(model, timing_seconds))
    return result


def random_batch(model: OnnxClassifier, n: int) -> list[np.ndarray]:
    """Random uint8 images for every graph input (timing, or agreement when the images are gone)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (n, 3, i.input_size, i.input_size), dtype=np.uint8) for i in model.inputs]


def timing(model: OnnxClassifier, seconds: float) -> dict:
    """Median single-image latency and batch throughput, each measured for about `seconds` / 2."""
    feeds = model.feeds(random_batch(model, TIMING_BATCH))
    single = _seconds_per_run(model.session, {name: array[:1] for name, array in feeds.items()}, seconds / 2)
    batched = _seconds_per_run(model.session, feeds, seconds / 2)
    return {"latency_ms": round(1000 * single, 2), "images_per_second": round(TIMING_BATCH / batched, 1)}


def _seconds_per_run(session, feeds: dict[str, np.ndarray], budget: float) -> float:
    session.run(None, feeds)  # warm-up: first run allocates
    times: list[float] = []
    deadline = time.perf_counter() + budget
    while not times or (time.perf_counter() < deadline and len(times) < 1000):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def torch_agreement(classifier: Classifier, float_path: Path, test: Subset | None, limit: int = 16) -> float:
    """Largest |p_torch - p_onnx| over a few test images (random pixels when the images are gone)."""
    model = OnnxClassifier(float_path)
    images = prepared_images(model, test, limit)[0] if test is not None and len(test) else random_batch(model, 4)
    if classifier.extractor.precision == "int8":  # against the run's own predictions, through its int8 trunk
        features = classifier.extractor.runner.run(images[0])
        return float(np.abs(classifier.probabilities_from_features(features) - model.run(images)).max())
    network = classifier.network(probabilities=True)
    with torch.inference_mode():
        inputs = [torch.from_numpy(batch).to(device_of(network)) for batch in images]  # where the network is
        expected = network(*inputs).cpu().numpy()
    return float(np.abs(expected - model.run(images)).max())


def report_table(report: dict) -> Table:
    table = Table("model", "file", "MB", "test accuracy", "latency (1 image)", "images/s (batch 16)",
                  title="ONNX export", caption=f"max |p_torch - p_onnx| = {report['torch_max_abs_diff']:.2e}"
                  + (f"; int8 speed-up x{report['int8_speedup']}" if "int8_speedup" in report else ""))
    for name, row in report["models"].items():
        accuracy = f"{row['test_accuracy']:.1%} ({row['n_test']})" if row["test_accuracy"] is not None else "n/a"
        table.add_row(name, row["file"], f"{row['megabytes']:.1f}", accuracy, f"{row['latency_ms']:.1f} ms",
                      f"{row['images_per_second']:.0f}")
    return table

"""The flow a run trained on a GPU goes through, for every strategy: train (summary and report included), export,
prediction by the trained classifier, by serve's predictor on the GPU and by the ONNX model. test_device.py runs
it on the simulated GPU (CI has none), test_gpu.py on a real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

import transferlab
from conftest import write_colour_classes
from transferlab.core.device import device_of
from transferlab.deploy.onnx_predict import OnnxClassifier

GPU_RUNS = {  # each kept small: a few images, one epoch
    "extract": {},
    "augment": {},  # end to end on a GPU: the frozen base runs in every batch
    "finetune": {"finetune": {"unfreeze": "all", "epochs": 1, "views": 1}},
    "scratch": {"fit": {"batch_size": 8}},
}


def served_predictor(run: Path):
    """serve's predictor on the GPU; where FastAPI is not installed (the GPU machine), the call serve makes."""
    try:
        from transferlab.deploy.serve import load_predictor
    except ImportError:
        return transferlab.load(run, device="cuda")
    return load_predictor(run, "torch", device="cuda")[0]


def check_a_gpu_run(strategy: str, root: Path, atol: float) -> None:
    """Run the flow; predictions made on the GPU and by the exported model agree within `atol`. Call it where
    "cuda" is a device (real or simulated)."""
    data = write_colour_classes(root / "colours", 6)
    images = sorted((data / "green").glob("*.jpg"))[:4]
    trained = transferlab.train(data, strategy=strategy, out=root / "run", epochs=1, quiet=True, **GPU_RUNS[strategy])
    export = transferlab.export(trained)
    served = served_predictor(root / "run")
    expected = trained.predict_proba(images)
    again = served.predict_proba([Image.open(path) for path in images])  # in memory: the GPU trunk runs them
    assert trained.extractor.device == "cuda" and device_of(served.extractor.runner._trunk).type == "cuda"
    assert device_of(trained.network()).type == "cpu"  # at rest, for whoever summarises or exports it
    assert (root / "run" / "summary.json").is_file() and (root / "run" / "report.html").is_file()
    assert export["torch_max_abs_diff"] < 1e-4  # both on the CPU
    np.testing.assert_allclose(again, expected, atol=atol)
    np.testing.assert_allclose(OnnxClassifier(root / "run").predict_proba(images), expected, atol=atol)

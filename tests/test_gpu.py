"""CUDA path: skipped on machines without a GPU (CI has none; the device machine runs it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import COLOURS, make_colour_run, write_colour_classes, write_colour_images
from gpu_runs import GPU_RUNS, check_a_gpu_run
from PIL import Image

import transferlab
from transferlab.core.config import FitConfig
from transferlab.features.extractor import FeatureExtractor
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")


def test_auto_device_uses_pytorch_on_cuda(tmp_path):
    fx = FeatureExtractor(cache_dir=tmp_path, quiet=True)
    assert (fx.device, fx.runtime) == ("cuda", "torch")


def test_cuda_features_match_cpu_onnx_features(tmp_path):
    images = write_colour_images(tmp_path / "imgs", COLOURS["green"], 6)
    gpu = FeatureExtractor(device="cuda", cache_dir=tmp_path / "gpu", quiet=True).extract(images)
    cpu = FeatureExtractor(device="cpu", cache_dir=tmp_path / "cpu", quiet=True).extract(images)
    # TF32 matmuls on Ampere+ GPUs differ from fp32 CPU kernels in the 3rd-4th significant digit.
    np.testing.assert_allclose(gpu.features, cpu.features, atol=2e-2, rtol=2e-2)
    cosine = (gpu.features * cpu.features).sum(1) / np.linalg.norm(gpu.features, axis=1) / np.linalg.norm(cpu.features, axis=1)
    assert cosine.min() > 0.999


def test_training_runs_on_cuda_and_returns_the_module_on_the_cpu():
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(40, 8, generator=generator) + 3, torch.randn(40, 8, generator=generator) - 3])
    y = torch.cat([torch.zeros(40, dtype=torch.int64), torch.ones(40, dtype=torch.int64)])
    head = build_head(HeadConfig("linear", 8, 2))
    history = fit(head, (x, y), (x, y), FitConfig(epochs=5, lr=1e-2), n_classes=2, device="cuda", quiet=True)
    assert history.epochs[-1]["val_accuracy"] == 1.0
    assert all(p.device.type == "cpu" for p in head.parameters())


def test_augment_runs_end_to_end_on_a_gpu_by_default(tmp_path):
    data = write_colour_classes(tmp_path / "colours", 10)
    classifier = transferlab.train(data, strategy="augment", out=tmp_path / "run", epochs=3, quiet=True)
    assert classifier.metrics["augment_path"] == "end-to-end"


@pytest.mark.parametrize("strategy", GPU_RUNS)
def test_every_strategy_trains_summarises_exports_and_predicts_on_cuda(strategy, tmp_path):
    # TF32 convolutions on the GPU against fp32 on the CPU (ONNX): features differ in the 3rd-4th digit
    check_a_gpu_run(strategy, tmp_path, atol=2e-2)


def test_load_runs_the_trunk_on_the_gpu_asked_for_and_on_the_cpu(tmp_path):
    run = make_colour_run(tmp_path, epochs=2)
    images = sorted((tmp_path / "data" / "red").glob("*.jpg"))[:3]
    on_cuda, on_cpu = transferlab.load(run, device="cuda"), transferlab.load(run, device="cpu")
    arrays = [np.asarray(Image.open(path).convert("RGB")) for path in images]  # in memory: uncached, run now
    np.testing.assert_allclose(on_cuda.predict_proba(arrays), on_cpu.predict_proba(arrays), atol=2e-2)
    assert (on_cuda.extractor.runtime, on_cpu.extractor.runtime) == ("torch", "onnx")

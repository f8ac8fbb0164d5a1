"""CUDA path: skipped on machines without a GPU (CI has none; the device machine runs it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import COLOURS, write_colour_images
from transferlab.features import FeatureExtractor

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

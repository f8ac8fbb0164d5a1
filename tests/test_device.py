"""One owner of the device: modules rest on the CPU, whoever runs one elsewhere works on its own copy (or moves it
back), probes follow the module. Checked without a GPU: on PyTorch's meta device where shapes suffice, and on a
simulated GPU (tests/simulated_gpu.py) where a whole run goes through and every device mix raises, as on CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import transferlab
from conftest import COLOURS, make_colour_run, write_colour_images
from gpu_runs import GPU_RUNS, check_a_gpu_run
from simulated_gpu import simulated_gpu
from transferlab.core.device import device_copy, device_of, on_device
from transferlab.features.extractor import FeatureExtractor
from transferlab.model.summary import summarize
from transferlab.backbones.trunk import export_onnx


def small_network() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2))


def test_the_simulated_gpu_refuses_cpu_inputs_to_a_network_on_it():
    with simulated_gpu():
        network = small_network().to("cuda")
        with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
            network(torch.zeros(1, 3, 8, 8))
        assert network(torch.zeros(1, 3, 8, 8).to("cuda")).device.type == "cuda"


def test_summary_probe_follows_the_network_device():
    summary = summarize(small_network().to("meta"), 16)  # meta tensors have shapes, no values: enough for a probe
    assert summary.rows[0].output_shape == (8, 16, 16)


def test_on_device_moves_a_module_back_where_it_was_in_the_mode_it_was_in():
    network = small_network().train()
    with simulated_gpu(), on_device(network, "cuda") as moved:
        assert device_of(moved).type == "cuda" and not moved.training
    assert device_of(network).type == "cpu" and network.training


def test_device_copy_leaves_the_original_where_it_was():
    network = small_network()
    assert device_copy(network, "cpu") is network
    assert device_of(device_copy(network, "meta")).type == "meta" and device_of(network).type == "cpu"


def test_export_leaves_the_callers_trunk_where_it_was(tmp_path):
    with simulated_gpu():
        trunk = FeatureExtractor(device="cuda", cache_dir=tmp_path, quiet=True).trunk().to("cuda")
        export_onnx(trunk, 224, tmp_path / "trunk.onnx")
        assert device_of(trunk).type == "cuda"
        assert trunk(torch.zeros(1, 3, 224, 224, dtype=torch.uint8).to("cuda")).shape == (1, 1280)


def test_torch_runtime_runs_its_own_copy_and_leaves_the_memoised_trunk_on_the_cpu(tmp_path):
    images = write_colour_images(tmp_path / "images", COLOURS["red"], 3)
    with simulated_gpu():
        extractor = FeatureExtractor(device="cuda", cache_dir=tmp_path, quiet=True)
        features = extractor.extract(images).features
        assert extractor.runtime == "torch" and device_of(extractor.runner._trunk).type == "cuda"
        assert device_of(extractor.trunk()).type == "cpu"
    assert features.shape == (3, 1280)


def test_load_puts_the_model_on_the_device_asked(tmp_path):
    run = make_colour_run(tmp_path, epochs=2)
    with simulated_gpu():
        on_cuda, on_cpu = transferlab.load(run, device="cuda"), transferlab.load(run, device="cpu")
        images = sorted((tmp_path / "data" / "red").glob("*.jpg"))[:3]
        gpu, cpu = on_cuda.predict_proba(images), on_cpu.predict_proba(images)
    assert (on_cuda.extractor.device, on_cuda.extractor.runtime) == ("cuda", "torch")
    assert (on_cpu.extractor.device, on_cpu.extractor.runtime) == ("cpu", "onnx")
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)


@pytest.mark.parametrize("strategy", GPU_RUNS)
def test_a_gpu_run_trains_summarises_exports_and_predicts_alike_everywhere(strategy, tmp_path):
    with simulated_gpu():
        check_a_gpu_run(strategy, tmp_path, atol=1e-4)  # values computed on the CPU: agreement is exact

"""The runtime seam: a runtime defined outside the package plugs in with one table entry."""

from __future__ import annotations

import numpy as np
import pytest

import transferlab
from transferlab.core.errors import TransferlabError
from transferlab.features.extractor import FeatureExtractor
from transferlab.features.runtimes import (
    RUNTIMES,
    TorchRuntime,
    TrunkSource,
    register_runtime,
)


class CountingRuntime:
    """Wraps the PyTorch runtime and counts the batches it runs."""

    batches = 0

    def __init__(self, source: TrunkSource):
        self.inner = TorchRuntime(source)

    def run(self, images: np.ndarray) -> np.ndarray:
        CountingRuntime.batches += 1
        return self.inner.run(images)


@pytest.fixture
def counting():
    register_runtime("counting", CountingRuntime)
    CountingRuntime.batches = 0
    yield CountingRuntime
    del RUNTIMES["counting"]


def test_a_runtime_registered_from_outside_extracts_and_trains(counting, colour_folder, tmp_path):
    classifier = transferlab.train(
        colour_folder, trunk={"runtime": "counting", "cache_dir": tmp_path / "cache"}, out=tmp_path / "run", epochs=10, lr=3e-3,
        quiet=True,
    )
    assert counting.batches >= 3  # train, validation and test features at least
    assert classifier.metrics["test_accuracy"] >= 0.8


def test_every_runtime_gives_the_same_features(counting, colour_folder, tmp_path):
    paths = sorted(colour_folder.rglob("*.jpg"))[:6]
    features = {
        name: FeatureExtractor(runtime=name, device="cpu", use_cache=False, quiet=True, cache_dir=tmp_path).extract(paths)
        for name in ("onnx", "torch", "counting")
    }
    np.testing.assert_allclose(features["onnx"].features, features["torch"].features, atol=1e-4, rtol=1e-4)
    np.testing.assert_array_equal(features["torch"].features, features["counting"].features)


def test_an_unknown_runtime_is_refused_before_any_work(colour_folder):
    with pytest.raises(TransferlabError, match="unknown runtime 'tpu'"):
        transferlab.train(colour_folder, trunk={"runtime": "tpu"}, quiet=True)

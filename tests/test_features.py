"""Feature extraction engine: ONNX Runtime on CPU, content-addressed cache, robustness."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import COLOURS, write_colour_images

from transferlab.core.errors import TransferlabError
from transferlab.features.cache import FeatureCache
from transferlab.features.extractor import FeatureExtractor


@pytest.fixture
def images(tmp_path):
    return write_colour_images(tmp_path / "imgs", COLOURS["red"], 10, size=40)


def test_extract_returns_one_pooled_vector_per_image(images, tmp_path):
    result = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True).extract(images)
    assert result.features.shape == (10, 1280)
    assert result.features.dtype == np.float32
    assert result.kept.all() and not result.failed
    assert np.isfinite(result.features).all()


def test_second_extraction_is_served_from_the_cache(images, tmp_path):
    first = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True).extract(images)
    second = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True).extract(images)
    assert first.cache_hits == 0 and second.cache_hits == len(images)
    np.testing.assert_array_equal(first.features, second.features)


def test_cache_is_addressed_by_content_not_by_path(images, tmp_path):
    copy = tmp_path / "renamed.jpg"
    copy.write_bytes(images[0].read_bytes())
    fx = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True)
    fx.extract(images[:1])
    assert fx.extract([copy]).cache_hits == 1


def test_onnx_runtime_matches_eager_pytorch(images, tmp_path):
    fx = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True, use_cache=False, device="cpu")
    batch = np.stack([fx.prepare(p) for p in images[:4]])
    onnx_features = fx.run_batch(batch)
    with torch.inference_mode():
        torch_features = fx.trunk()(torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(onnx_features, torch_features, atol=1e-4, rtol=1e-4)


def test_corrupt_file_is_reported_and_the_rest_extracted(images, tmp_path):
    broken = tmp_path / "truncated.jpg"
    broken.write_bytes(images[0].read_bytes()[:300])
    result = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True).extract([*images[:3], broken])
    assert result.features.shape[0] == 3
    assert list(result.kept) == [True, True, True, False]
    assert broken in result.failed


def test_earlier_layer_gives_narrower_features_and_its_own_cache_key(images, tmp_path):
    last = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True)
    earlier = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True, layer=-2)
    features = earlier.extract(images[:2]).features
    assert features.shape[1] < 1280
    assert earlier.key != last.key


def test_layer_out_of_range_is_a_clear_error(images, tmp_path):
    with pytest.raises(TransferlabError, match="out of range"):
        FeatureExtractor(cache_dir=tmp_path / "c", quiet=True, layer=42).extract(images[:1])


def test_cache_rows_survive_reopening(tmp_path):
    cache = FeatureCache(tmp_path / "f.sqlite")
    cache.put_many({"a": np.arange(4, dtype=np.float32)})
    cache.close()
    again = FeatureCache(tmp_path / "f.sqlite")
    np.testing.assert_array_equal(again.get_many(["a", "b"])["a"], np.arange(4, dtype=np.float32))
    assert len(again) == 1


def test_kill_9_mid_extraction_leaves_a_cache_the_next_run_completes(images, tmp_path):
    cache_dir = tmp_path / "c"
    # A child process extracts in batches of 2 and is SIGKILLed inside its third batch.
    script = textwrap.dedent(
        f"""
        import os, signal
        from transferlab.features.extractor import FeatureExtractor
        fx = FeatureExtractor(cache_dir={str(cache_dir)!r}, batch_size=2, quiet=True)
        run = fx.run_batch
        calls = []
        def run_then_die(batch):
            calls.append(1)
            if len(calls) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
            return run(batch)
        fx.run_batch = run_then_die
        fx.extract({[str(p) for p in images]!r})
        """
    )
    child = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert child.returncode == -9
    resumed = FeatureExtractor(cache_dir=cache_dir, quiet=True).extract(images)
    assert resumed.cache_hits == 4 and resumed.kept.all()
    fresh = FeatureExtractor(cache_dir=tmp_path / "fresh", quiet=True).extract(images)
    np.testing.assert_allclose(resumed.features, fresh.features, atol=1e-5)

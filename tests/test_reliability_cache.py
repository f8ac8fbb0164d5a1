"""Reliability of the feature cache and the cached ONNX trunk: damage is found, discarded and recomputed (with
one warning line), a broken trunk is a clear error, and a full disk is one line naming the path."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import write_colour_images
from transferlab.errors import TransferlabError
from transferlab.feature_cache import TABLE, FeatureCache
from transferlab.features import FeatureExtractor
from transferlab.runtimes import TrunkSource, digest_path, register_runtime, RUNTIMES


def vectors(n: int, dim: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"key{i}": rng.standard_normal(dim).astype(np.float32) for i in range(n)}


def filled_cache(path: Path, n: int = 200, dim: int = 16) -> dict[str, np.ndarray]:
    cache = FeatureCache(path)
    items = vectors(n, dim)
    cache.put_many(items)
    cache.close()
    return items


def checkpoint(path: Path) -> None:
    """Fold the WAL into the main file, so that damage to the file is damage to the records."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def test_flipped_bytes_in_the_cache_file_never_return_a_wrong_vector(tmp_path, capsys):
    path = tmp_path / "f.sqlite"
    items = filled_cache(path)
    checkpoint(path)
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 4000, 7):  # a damaged stretch of pages
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    found = FeatureCache(path).get_many(list(items))
    for key, vector in found.items():
        np.testing.assert_array_equal(vector, items[key])
    assert len(found) < len(items)  # the damage was noticed, not read back
    assert "warning:" in capsys.readouterr().err


def test_record_with_flipped_bytes_is_discarded_with_one_warning(tmp_path, capsys):
    path = tmp_path / "f.sqlite"
    items = filled_cache(path, n=3)
    db = sqlite3.connect(path)
    blob = bytearray(db.execute(f"SELECT vector FROM {TABLE} WHERE key = 'key1'").fetchone()[0])
    blob[5] ^= 0x40  # the checksum column is left as it was
    db.execute(f"UPDATE {TABLE} SET vector = ? WHERE key = 'key1'", (bytes(blob),))
    db.commit()
    db.close()
    cache = FeatureCache(path)
    assert set(cache.get_many(list(items))) == {"key0", "key2"}
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 damaged record" in err
    assert len(cache) == 2  # deleted, so the next run recomputes it instead of warning again


@pytest.mark.parametrize("bad", ["wrong length", "not finite"])
def test_record_of_wrong_length_or_not_finite_is_discarded(tmp_path, bad):
    cache = FeatureCache(tmp_path / "f.sqlite")
    cache.put_many(vectors(2))
    vector = np.ones(8, np.float32) if bad == "wrong length" else np.full(16, np.nan, np.float32)
    cache.put_many({"bad": vector})  # stored with a valid checksum: only the length or values give it away
    assert set(cache.get_many(["key0", "key1", "bad"])) == {"key0", "key1"}


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_database_is_moved_aside_and_rebuilt(tmp_path, capsys, damage):
    path = tmp_path / "f.sqlite"
    items = filled_cache(path)
    checkpoint(path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(b"this is not a database" * 100)
    cache = FeatureCache(path)
    assert cache.get_many(list(items)) == {}
    cache.put_many({"new": np.ones(16, np.float32)})
    assert set(cache.get_many(["new"])) == {"new"}
    assert (tmp_path / "f.sqlite.corrupt").exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "moved aside" in err


def test_garbage_database_gives_no_database_error(tmp_path):
    path = tmp_path / "f.sqlite"
    path.write_bytes(b"\x00garbage" * 1000)
    cache = FeatureCache(path)  # no sqlite3.DatabaseError
    assert len(cache) == 0


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return write_colour_images(tmp_path_factory.mktemp("imgs") / "red", (200, 40, 40), 6)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A cache directory with a good ONNX export and cached features, and those features."""
    cache_dir = tmp_path_factory.mktemp("reference-cache")
    fx = FeatureExtractor(cache_dir=cache_dir, quiet=True, device="cpu", runtime="onnx")
    return cache_dir, fx.extract(images).features


def copied_cache(reference, tmp_path) -> Path:
    cache_dir = tmp_path / "cache"
    shutil.copytree(reference[0], cache_dir)
    return cache_dir


def test_extraction_from_a_damaged_cache_file_gives_the_right_features(images, reference, tmp_path):
    cache_dir = copied_cache(reference, tmp_path)
    (db_path,) = (cache_dir / "features").glob("*.sqlite")
    checkpoint(db_path)
    data = bytearray(db_path.read_bytes())
    for offset in range(len(data) // 2, len(data), 3):
        data[offset] ^= 0x5A
    db_path.write_bytes(bytes(data))
    result = FeatureExtractor(cache_dir=cache_dir, quiet=True, device="cpu", runtime="onnx").extract(images)
    np.testing.assert_allclose(result.features, reference[1], rtol=1e-5, atol=1e-5)


def test_damaged_cached_onnx_file_is_exported_again(images, reference, tmp_path, capsys):
    cache_dir = copied_cache(reference, tmp_path)
    shutil.rmtree(cache_dir / "features")
    (onnx_path,) = (cache_dir / "onnx").glob("*.onnx")
    data = bytearray(onnx_path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 20000, 4):  # inside the weights
        data[offset] = 0xFF
    onnx_path.write_bytes(bytes(data))
    result = FeatureExtractor(cache_dir=cache_dir, quiet=True, device="cpu", runtime="onnx").extract(images)
    np.testing.assert_allclose(result.features, reference[1], rtol=1e-5, atol=1e-5)
    assert "exporting it again" in capsys.readouterr().err
    assert digest_path(onnx_path).is_file()


class NanRuntime:
    def __init__(self, source: TrunkSource):
        self.source = source

    def run(self, images: np.ndarray) -> np.ndarray:
        return np.full((len(images), 8), np.nan, np.float32)


def test_trunk_giving_non_finite_features_is_a_clear_error_and_nothing_is_cached(images, tmp_path):
    register_runtime("nan-for-test", NanRuntime)
    try:
        fx = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True, device="cpu", runtime="nan-for-test")
        with pytest.raises(TransferlabError, match="non-finite features"):
            fx.extract(images)
        assert len(fx.cache) == 0
    finally:
        RUNTIMES.pop("nan-for-test")


def test_full_disk_while_caching_is_one_line_naming_the_path(small_disk):
    cache = FeatureCache(small_disk / "f.sqlite")
    with pytest.raises(TransferlabError, match=r"no space left on device writing .*f\.sqlite \(needs about") as info:
        for start in range(0, 400, 20):  # 20 x 20 records of 16 KB: well past 2 MB
            cache.put_many({f"k{start + i}": np.ones(4096, np.float32) for i in range(20)})
    assert "MB free" in str(info.value)
    cache.close()

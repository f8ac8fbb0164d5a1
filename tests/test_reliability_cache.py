"""A damaged cache must never poison a model: what is read is verified, and what fails is recomputed."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from conftest import COLOURS, write_colour_images
from PIL import Image

from transferlab.core.config import FitConfig
from transferlab.core.errors import TransferlabError
from transferlab.features.cache import TABLE, FeatureCache, checksum, not_damage
from transferlab.features.extractor import FeatureExtractor
from transferlab.features.runtimes import RUNTIMES, register_runtime
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import fit


@pytest.fixture
def images(tmp_path):
    return write_colour_images(tmp_path / "imgs", COLOURS["blue"], 6, size=40)


def extract(images, cache):
    return FeatureExtractor(cache_dir=cache, quiet=True, device="cpu").extract(images)


def test_flipped_bytes_in_a_cached_record_are_discarded_and_recomputed(images, tmp_path, capfd):
    original = extract(images, tmp_path / "c")
    (db_path,) = (tmp_path / "c" / "features").glob("*.sqlite")
    with sqlite3.connect(db_path) as db:
        key, blob = db.execute(f"SELECT key, vector FROM {TABLE} LIMIT 1").fetchone()
        damaged = bytearray(blob)
        damaged[100:104] = b"\xff\xff\xff\x7f"  # a NaN in the middle of the vector
        db.execute(f"UPDATE {TABLE} SET vector = ? WHERE key = ?", (bytes(damaged), key))
    again = extract(images, tmp_path / "c")
    np.testing.assert_array_equal(again.features, original.features)
    assert again.cache_hits == len(images) - 1
    assert "1 damaged record(s)" in capfd.readouterr().err


def test_a_record_of_the_wrong_length_is_discarded(images, tmp_path, capfd):
    original = extract(images, tmp_path / "c")
    (db_path,) = (tmp_path / "c" / "features").glob("*.sqlite")
    with sqlite3.connect(db_path) as db:
        key, blob = db.execute(f"SELECT key, vector FROM {TABLE} LIMIT 1").fetchone()
        db.execute(f"UPDATE {TABLE} SET vector = ?, checksum = ? WHERE key = ?", (blob[:-8], checksum(blob[:-8]), key))
    np.testing.assert_array_equal(extract(images, tmp_path / "c").features, original.features)
    assert "damaged record" in capfd.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_database_file_is_moved_aside_and_rebuilt(images, tmp_path, capfd, damage):
    original = extract(images, tmp_path / "c")
    (db_path,) = (tmp_path / "c" / "features").glob("*.sqlite")
    content = db_path.read_bytes()
    db_path.write_bytes(b"not a database at all" * 200 if damage == "garbage" else content[: len(content) // 3])
    for leftover in db_path.parent.glob("*-wal"):
        leftover.unlink()
    np.testing.assert_array_equal(extract(images, tmp_path / "c").features, original.features)
    assert "is damaged" in capfd.readouterr().err
    assert list(db_path.parent.glob("*.corrupt-*"))


def test_a_damaged_cached_onnx_trunk_is_exported_again(images, tmp_path, capfd):
    original = extract(images, tmp_path / "c")
    (onnx_path,) = (tmp_path / "c" / "onnx").glob("*.onnx")
    content = bytearray(onnx_path.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 64] = b"\xff" * 64  # weights turned into NaNs
    onnx_path.write_bytes(bytes(content))
    for db in (tmp_path / "c" / "features").glob("*"):
        db.unlink()  # nothing cached: every feature comes from the trunk
    np.testing.assert_allclose(extract(images, tmp_path / "c").features, original.features, atol=1e-5)
    assert "exporting it again" in capfd.readouterr().err


def test_a_loss_that_becomes_nan_stops_training_with_a_clear_error():
    x = torch.randn(32, 8)
    x[5, 3] = float("nan")  # one broken input poisons every step after it
    y = torch.randint(0, 2, (32,))
    with pytest.raises(TransferlabError, match="training loss became nan in epoch 1"):
        fit(build_head(HeadConfig("linear", 8, 2)), (x, y), (x[:4], y[:4]), FitConfig(epochs=3, batch_size=32),
            n_classes=2, quiet=True)


def stored_vectors(path, n: int = 200, dim: int = 16) -> dict[str, np.ndarray]:
    """A cache file holding `n` random vectors, its WAL folded in (so damage to the file is damage to them)."""
    rng = np.random.default_rng(0)
    items = {f"key{i}": rng.standard_normal(dim).astype(np.float32) for i in range(n)}
    cache = FeatureCache(path)
    cache.put_many(items)
    cache.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return items


def test_flipped_bytes_anywhere_in_the_cache_file_never_return_a_wrong_vector(tmp_path, capfd):
    path = tmp_path / "f.sqlite"
    items = stored_vectors(path)
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 3, len(data) // 3 + 4000, 7):  # a damaged stretch of pages
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    found = FeatureCache(path).get_many(list(items))
    for key, vector in found.items():
        np.testing.assert_array_equal(vector, items[key])
    assert len(found) < len(items)  # the damage was noticed, not read back
    assert "warning:" in capfd.readouterr().err


def test_a_non_finite_record_with_a_valid_checksum_is_discarded(tmp_path):
    cache = FeatureCache(tmp_path / "f.sqlite")
    cache.put_many({"good": np.ones(16, np.float32), "bad": np.full(16, np.nan, np.float32)})
    assert set(cache.get_many(["good", "bad"])) == {"good"}


class NanRuntime:
    """A runtime whose trunk is broken: every feature NaN."""

    def __init__(self, source):
        self.source = source

    def run(self, images: np.ndarray) -> np.ndarray:
        return np.full((len(images), 8), np.nan, np.float32)


def test_a_trunk_giving_non_finite_features_is_a_clear_error_and_nothing_is_cached(images, tmp_path):
    register_runtime("nan-for-test", NanRuntime)
    try:
        fx = FeatureExtractor(cache_dir=tmp_path / "c", quiet=True, device="cpu", runtime="nan-for-test")
        with pytest.raises(TransferlabError, match="non-finite features"):
            fx.extract(images)
        with pytest.raises(TransferlabError, match="non-finite features"):
            fx.features_of_images([Image.open(images[0])])  # serving gets no NaN predictions either
        assert len(fx.cache) == 0
    finally:
        RUNTIMES.pop("nan-for-test")


def test_a_full_disk_or_a_lock_is_not_taken_for_a_damaged_cache():
    """Those say nothing about the file: it must stay where it is (and the error is a clear line)."""
    assert not_damage(sqlite3.OperationalError("database or disk is full"))
    assert not_damage(sqlite3.OperationalError("database is locked"))
    assert not not_damage(sqlite3.DatabaseError("file is not a database"))

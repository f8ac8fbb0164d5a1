"""A failed run must not leave a folder that contradicts itself, and a run never lands on another by accident."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

import transferlab
from transferlab.backbones.trunk import export_onnx
from transferlab.core.errors import TransferlabError
from transferlab.runs.writer import staged


def test_out_onto_an_existing_run_is_refused_before_any_work(colour_folder, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.onnx").write_text("an older export")
    with pytest.raises(TransferlabError, match="already holds a run"):
        transferlab.train(colour_folder / "missing", out=tmp_path / "run", quiet=True)  # refused before the data is read


def test_out_onto_a_file_is_refused_before_any_work(colour_folder, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(TransferlabError, match="is a file"):
        transferlab.train(colour_folder, out=tmp_path / "run", quiet=True)


def test_overwrite_replaces_the_whole_folder(colour_folder, tmp_path):
    transferlab.train(colour_folder, out=tmp_path / "run", epochs=2, quiet=True)
    (tmp_path / "run" / "model.onnx").write_text("stale export of the old model")
    transferlab.train(colour_folder, out=tmp_path / "run", epochs=3, overwrite=True, quiet=True)
    assert not (tmp_path / "run" / "model.onnx").exists()  # nothing of the old run is left to be mistaken for the new
    assert transferlab.load(tmp_path / "run").metrics["epochs_run"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folders left behind


def test_a_run_that_fails_while_writing_leaves_the_old_run_untouched(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"old": true}')
    with pytest.raises(TransferlabError, match="no space left on the device writing"):
        with staged(tmp_path / "run") as staging:
            (staging / "config.json").write_text("{}")
            raise OSError(28, "No space left on device")  # as a full disk fails a write half way
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["metrics.json"]
    assert (tmp_path / "run" / "metrics.json").read_text() == '{"old": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB tmpfs (root can mount one; elsewhere the test is skipped with the reason)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)  # lazy: a cache file may still be open


def test_a_full_disk_gives_one_clear_line_and_the_next_run_recovers(colour_folder, small_disk, tmp_path):
    with pytest.raises(TransferlabError, match="no space left on the device writing .*run") as error:
        transferlab.train(colour_folder, out=small_disk / "run", epochs=2, quiet=True)
    assert "MB free there" in error.value.message
    assert not os.listdir(small_disk)  # nothing half-written left on the full disk
    classifier = transferlab.train(colour_folder, out=tmp_path / "roomy", epochs=2, quiet=True)
    assert (classifier.run_dir / "model.safetensors").is_file()


def test_a_full_cache_disk_gives_one_clear_line(colour_folder, small_disk):
    with pytest.raises(TransferlabError, match="no space left on the device writing"):
        transferlab.train(colour_folder, trunk={"cache_dir": small_disk / "cache"}, epochs=2, quiet=True,
                          out=small_disk.parent / "r")
    shutil.rmtree(small_disk / "cache", ignore_errors=True)


class BigLinear(torch.nn.Module):
    """uint8 images in, as a trunk takes them; 6.2 MB of weights, six times the small disk."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 8000)

    def forward(self, images):
        return self.linear(images.float().flatten(1))


def test_a_full_disk_exporting_onnx_says_how_much_space_it_needs(small_disk):
    with pytest.raises(TransferlabError, match=r"writing .*trunk\.onnx \(needs about 6\.\d MB, \d+\.\d MB free there\)"):
        export_onnx(BigLinear(), 8, small_disk / "trunk.onnx")
    assert not os.listdir(small_disk)


def test_a_full_disk_writing_a_run_says_how_much_the_file_needed(colour_folder, small_disk):
    (small_disk / "filler").write_bytes(b"x" * 900_000)  # the model file no longer fits
    with pytest.raises(TransferlabError, match=r"writing .*run \(needs about \d+\.\d MB, 0\.\d MB free there\)"):
        transferlab.train(colour_folder, out=small_disk / "run", epochs=2, quiet=True)


"""A failed run must not leave a folder that contradicts itself, and a run never lands on another by accident."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import transferlab
from transferlab.backbones.trunk import export_onnx
from transferlab.core.errors import TransferlabError
from transferlab.runs.writer import process_start, staged, writer_gone


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


# A writer that stays in the middle of writing runs to the destinations it is given, until it is killed.
WRITER = """
import sys, time
from contextlib import ExitStack
from pathlib import Path
from transferlab.runs.writer import staged
with ExitStack() as stack:
    print(*(stack.enter_context(staged(Path(d))) for d in sys.argv[1:]), flush=True)
    time.sleep(600)
"""


def start_writer(*destinations: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, *map(str, destinations)], stdout=subprocess.PIPE, text=True)


def partial_folders(writer: subprocess.Popen) -> list[Path]:
    """The writer's partial folders, once they exist."""
    return [Path(p) for p in writer.stdout.readline().split()]


def test_a_killed_writers_partial_folder_is_removed_by_the_next_run_to_its_destination(tmp_path):
    killed, live = start_writer(tmp_path / "x", tmp_path / "y"), start_writer(tmp_path / "x")
    (dead_x, dead_y), (live_x,) = partial_folders(killed), partial_folders(live)
    try:
        killed.kill()  # SIGKILL, as kill -9: no clean-up runs
        killed.wait()
        assert dead_x.is_dir() and dead_y.is_dir()
        with staged(tmp_path / "x") as staging:
            (staging / "metrics.json").write_text("{}")
        assert not dead_x.exists()  # the killed writer's partial folder of x
        assert live_x.is_dir()  # a live writer's is kept: it is still writing
        assert dead_y.is_dir()  # another destination's is left to the next run to y
        assert (tmp_path / "x" / "metrics.json").is_file()
    finally:
        live.kill()
        live.wait()


def test_a_writer_whose_pid_now_names_another_process_counts_as_gone():
    started = process_start(os.getpid())
    if started is None:
        pytest.skip("no /proc here: a process's start time is unknown")
    assert not writer_gone(os.getpid(), started)
    assert writer_gone(os.getpid(), started + 1)  # the pid was reused by a process started later


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


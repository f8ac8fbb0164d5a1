"""Reliability of runs: --out is checked before any work, a run folder is complete or absent (never a mix of
two runs), and a full disk is one line naming the path and the space needed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import transferlab
from conftest import write_colour_classes
from transferlab import pipeline
from transferlab.cli import app
from transferlab.compare import compare
from transferlab.errors import TransferlabError
from transferlab.files import atomic_write_bytes
from transferlab.runs import replacing_folder
from transferlab.trunk import export_onnx

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_colour_classes(tmp_path_factory.mktemp("reliability") / "data", 8)


def train_small(data: Path, out: Path, **kwargs):
    return transferlab.train(data, out=out, epochs=2, quiet=True, **kwargs)


def test_out_onto_an_existing_run_is_an_error_before_any_work(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.json").write_text("{}")
    # the data folder does not exist: the error about --out comes first, before anything is read
    with pytest.raises(TransferlabError, match="already exists") as info:
        transferlab.train(tmp_path / "no-such-data", out=out, quiet=True)
    assert "--overwrite" in info.value.hint


def test_out_onto_a_file_is_an_error_before_any_work(tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    with pytest.raises(TransferlabError, match="is a file"):
        transferlab.train(tmp_path / "no-such-data", out=out, quiet=True)
    assert out.read_text() == "keep me"


def test_cli_train_out_onto_an_existing_run_is_a_one_line_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text("{}")
    env = {**os.environ, "PYTHONPATH": str(Path(transferlab.__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "transferlab", "--quiet", "train", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env,
    )
    assert done.returncode == 2
    assert "already exists" in done.stderr and "--overwrite" in done.stderr and "Traceback" not in done.stderr


def test_cli_has_overwrite_on_train_and_compare():
    for command in ("train", "compare"):
        assert "--overwrite" in runner.invoke(app, [command, "--help"], terminal_width=200).output


def test_overwrite_replaces_the_whole_run_folder(data, tmp_path):
    out = tmp_path / "run"
    train_small(data, out)
    (out / "model.onnx").write_bytes(b"a stale export of the previous model")
    train_small(data, out, overwrite=True)
    assert not (out / "model.onnx").exists()
    assert {"model.safetensors", "metrics.json", "report.html", "config.json"} <= {p.name for p in out.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no staging or old folder left behind
    assert str(out.resolve()) in (out / "report.html").read_text()  # the report names its final folder


def test_failed_rerun_keeps_the_previous_run_whole(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_small(data, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing_report(*args, **kwargs):
        raise OSError("simulated failure while writing the report")

    monkeypatch.setattr(pipeline, "write_report", failing_report)
    with pytest.raises(OSError, match="simulated"):
        train_small(data, out, overwrite=True, seed=1)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_compare_into_an_existing_folder_needs_overwrite(tmp_path):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.csv").write_text("strategy\n")
    with pytest.raises(TransferlabError, match="already exists"):
        compare(tmp_path / "no-such-data", ["extract"], out=out, quiet=True)


def test_full_disk_writing_a_file_is_one_line_naming_the_path_and_leaves_nothing(small_disk):
    target = small_disk / "big.bin"
    with pytest.raises(TransferlabError, match=r"no space left on device writing .*big\.bin \(needs about 3\.0 MB"):
        atomic_write_bytes(target, b"x" * 3_000_000)
    assert list(small_disk.iterdir()) == []


class BigLinear(torch.nn.Module):
    """uint8 images in, as a trunk takes them; 6.2 MB of weights, three times the small disk."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3 * 8 * 8, 8000)

    def forward(self, images):
        return self.linear(images.float().flatten(1))


def test_full_disk_exporting_onnx_is_one_line_with_the_size_needed(small_disk):
    module = BigLinear()
    with pytest.raises(TransferlabError, match=r"writing .*trunk\.onnx \(needs about 6\.\d MB, "):
        export_onnx(module, 8, small_disk / "trunk.onnx")
    assert list(small_disk.iterdir()) == []


def test_full_disk_writing_a_run_leaves_no_folder_and_the_next_run_recovers(data, small_disk, tmp_path):
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * 1_900_000)  # a nearly full disk: the model and plots do not fit
    with pytest.raises(TransferlabError, match="no space left on device writing") as info:
        train_small(data, small_disk / "run")
    assert str(small_disk / "run") in info.value.message and ".partial" not in str(info.value)
    assert "needs about" in info.value.message or "needs more than" in info.value.message
    assert [p.name for p in small_disk.iterdir()] == ["filler"]
    filler.unlink()
    classifier = train_small(data, small_disk / "run")
    assert (small_disk / "run" / "model.safetensors").is_file() and classifier.metrics["test_accuracy"] is not None


def test_compare_with_overwrite_replaces_the_whole_folder(data, tmp_path):
    out = tmp_path / "cmp"
    (out / "finetune").mkdir(parents=True)
    (out / "finetune" / "model.safetensors").write_bytes(b"a run from an earlier comparison")
    comparison = compare(data, ["extract"], out=out, overwrite=True, epochs=2, quiet=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["extract"]
    assert [row["strategy"] for row in comparison.rows] == ["extract"]
    assert [p.name for p in tmp_path.iterdir()] == ["cmp"]


def test_failed_overwrite_of_a_folder_of_runs_puts_the_old_one_back(tmp_path):
    folder = tmp_path / "cmp"
    folder.mkdir()
    (folder / "compare.csv").write_text("the old comparison\n")
    with pytest.raises(RuntimeError), replacing_folder(folder, overwrite=True):
        (folder / "split.csv").write_text("half of a new comparison\n")
        raise RuntimeError("a run failed")
    assert [p.name for p in folder.iterdir()] == ["compare.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["cmp"]

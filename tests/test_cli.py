"""The command line: a thin shell over the API, with clear one-line errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from transferlab.cli.app import app

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import write_colour_classes

    root = tmp_path_factory.mktemp("cli")
    write_colour_classes(root / "data", 12)
    result = runner.invoke(app, ["--quiet", "train", str(root / "data"), "--out", str(root / "run"), "--epochs", "15", "--lr", "0.003"])
    assert result.exit_code == 0, result.output
    return root / "run"


def test_train_command_writes_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] > 0.6 and metrics["n_test"] > 0


def test_train_passes_fine_tuning_and_augmentation_flags(run_dir, tmp_path):
    data = run_dir.parent / "data"
    result = runner.invoke(app, [
        "--quiet", "train", str(data), "--strategy", "finetune", "--out", str(tmp_path / "ft"), "--epochs", "2",
        "--views", "1", "--augment", "none", "--finetune-epochs", "1", "--finetune-lr", "0.0001", "--cached",
        "--finetune-batch-size", "8",
    ])
    assert result.exit_code == 0, result.output
    options = json.loads((tmp_path / "ft" / "config.json").read_text())["options"]
    assert (options["finetune_epochs"], options["finetune_lr"], options["views"]) == (1, 1e-4, 1)
    assert options["finetune_batch_size"] == 8
    assert options["augment"]["rotation_range"] == 0.0 and options["augment"]["horizontal_flip"] is False
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["epochs_run"] == metrics["phase1_epochs"] + 1  # one fine-tuning epoch after the head's
    assert options["end_to_end"] is False and metrics["finetune_path"] == "cached"
    assert (metrics["finetune_batch_size"], metrics["finetune_lr_used"]) == (8, 1e-4)  # as asked: no scaling


def test_train_takes_the_head_and_optimizer_flags_of_the_table(run_dir, tmp_path):
    data = run_dir.parent / "data"
    result = runner.invoke(app, [
        "--quiet", "train", str(data), "--out", str(tmp_path / "run"), "--epochs", "2", "--hidden", "32",
        "--dropout", "0.1", "--weight-decay", "0.0001", "--patience", "0",
    ])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run" / "config.json").read_text())["settings"]
    assert (settings["head"]["hidden"], settings["head"]["dropout"]) == (32, 0.1)
    assert (settings["fit"]["weight_decay"], settings["fit"]["patience"]) == (1e-4, None)


def test_train_end_to_end_flag_augments_every_batch_through_the_frozen_base(run_dir, tmp_path):
    data = run_dir.parent / "data"
    result = runner.invoke(app, [
        "--quiet", "train", str(data), "--strategy", "augment", "--end-to-end", "--out", str(tmp_path / "e2e"),
        "--epochs", "2",
    ])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e2e" / "metrics.json").read_text())["augment_path"] == "end-to-end"


def test_predict_table_shows_the_predicted_class(run_dir):
    image = next((run_dir.parent / "data" / "blue").glob("*.jpg"))
    result = runner.invoke(app, ["predict", str(run_dir), str(image)])
    assert result.exit_code == 0 and "blue" in result.output


def test_predict_csv_has_one_row_per_rank(run_dir):
    folder = run_dir.parent / "data" / "red"
    result = runner.invoke(app, ["predict", str(run_dir), str(folder), "--format", "csv", "--top-k", "2"])
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert len(rows) == 2 * 12
    assert {r["rank"] for r in rows} == {"1", "2"}


def test_predict_json_reports_a_corrupt_image_instead_of_failing(run_dir, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = next((run_dir.parent / "data" / "green").glob("*.jpg"))
    result = runner.invoke(app, ["predict", str(run_dir), str(good), str(bad), "--format", "json"])
    assert result.exit_code == 1, result.output  # every image predicted, and the failure said in the exit code
    rows = json.loads(result.output)
    assert rows[0]["top"][0]["label"] == "green"
    assert rows[1]["error"] and rows[1]["top"] == []


def test_backbones_lists_embedded_and_download_backbones():
    result = runner.invoke(app, ["--json", "backbones"])
    rows = {r["name"]: r["status"] for r in json.loads(result.output)}
    assert rows["efficientnet_lite0"] == "embedded"
    assert "vgg16" in rows and "resnet50" in rows


def test_imagenet_command_names_the_bundled_coffee_photo(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    path = tmp_path / "coffee.jpg"
    Image.fromarray(skimage_data.coffee()).save(path)
    result = runner.invoke(app, ["--json", "imagenet", str(path), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["top"][0]["label"] == "espresso"


def test_user_errors_print_one_line_with_a_hint_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "transferlab", "train", str(tmp_path / "missing"), "--split", "0.5,0.5"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr

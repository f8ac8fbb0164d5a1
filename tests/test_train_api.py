"""End to end: transferlab.train / load / predict and the run folder, on generated images."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest

import transferlab
from transferlab.core.errors import TransferlabError

RUN_FILES = [
    "config.json", "split.csv", "skipped.csv", "history.csv", "metrics.json", "model.safetensors",
    "model.json", "labels.txt", "accuracy.png", "loss.png", "confusion_matrix.png", "report.html",
    "test_predictions.csv", "summary.json", "explanations",
]


@pytest.fixture
def trained(colour_folder, tmp_path):
    (colour_folder / "red" / "notes.txt").write_text("not an image")
    (colour_folder / "blue" / "empty.jpg").write_bytes(b"")
    return transferlab.train(colour_folder, out=tmp_path / "run", epochs=15, lr=3e-3, quiet=True)


def test_train_writes_every_run_artifact(trained):
    assert sorted(p.name for p in trained.run_dir.iterdir() if not p.name.startswith(".")) == sorted(RUN_FILES)


def test_train_learns_and_reports_metrics_contract(trained):
    metrics = json.loads((trained.run_dir / "metrics.json").read_text())
    for key in ("test_accuracy", "top5_accuracy", "n_train", "n_val", "n_test", "n_skipped",
                "extract_seconds", "train_seconds", "total_seconds"):
        assert key in metrics
    assert metrics["test_accuracy"] >= 0.8
    assert metrics["top5_accuracy"] is None  # 3 classes
    assert metrics["n_skipped"] == 2
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 45


def test_skipped_files_are_listed_with_reasons(trained):
    with open(trained.run_dir / "skipped.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["path"].split("/")[-1] for r in rows} == {"notes.txt", "empty.jpg"}
    assert all(r["reason"] for r in rows)


def test_config_records_settings_and_versions(trained):
    config = json.loads((trained.run_dir / "config.json").read_text())
    assert config["options"]["backbone"] == "efficientnet_lite0"
    assert config["options"]["fit"]["epochs"] == 15
    assert config["environment"]["packages"]["torch"] == metadata.version("torch")


def test_config_records_every_setting_under_the_tables_names_as_keywords_of_train(trained):
    from transferlab.core.options import GROUPS, OPTIONS
    from transferlab.core.settings import train_settings

    settings = json.loads((trained.run_dir / "config.json").read_text())["settings"]
    recorded = {*(name for name in settings if name not in GROUPS),
                *(f"{group}.{name}" for group in GROUPS for name in settings[group])}
    fit_keywords = {"fit.epochs": "epochs", "fit.lr": "lr", "fit.seed": "seed"}  # keywords of train, kept in fit
    assert {fit_keywords.get(name, name) for name in recorded} == set(OPTIONS) - {"fit.deadline"}
    assert (settings["fit"]["epochs"], settings["fit"]["lr"], settings["split"]["fractions"]) == (15, 3e-3, [0.7, 0.15, 0.15])
    assert train_settings(settings).to_dict() == settings  # the record is keywords of train again


def test_loaded_run_predicts_like_the_trained_classifier(trained, colour_folder):
    images = sorted((colour_folder / "green").glob("*.jpg"))[:3]
    loaded = transferlab.load(trained.run_dir)
    a = trained.predict_proba(images)
    b = loaded.predict_proba(images)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert [p.label for p in loaded.predict(images)] == ["green"] * 3


def test_split_csv_reproduces_the_split(trained, colour_folder, tmp_path):
    again = transferlab.dataset(colour_folder, split_csv=trained.run_dir / "split.csv")
    first = transferlab.dataset(colour_folder)
    assert [str(p) for p in again.test.paths] == [str(p) for p in first.test.paths]


def test_unknown_strategy_is_a_clear_error(colour_folder):
    with pytest.raises(TransferlabError, match="unknown strategy"):
        transferlab.train(colour_folder, strategy="magic", quiet=True)


def test_unknown_backbone_fails_before_reading_images(tmp_path):
    with pytest.raises(TransferlabError, match="nope"):
        transferlab.train(tmp_path / "does-not-exist", backbone="nope", quiet=True)


def test_load_of_a_non_run_folder_is_a_clear_error(tmp_path):
    with pytest.raises(TransferlabError, match="not a transferlab run folder"):
        transferlab.load(tmp_path)


def test_warm_rerun_builds_no_network(colour_folder, tmp_path):
    """With every feature cached and the model summary remembered, a rerun without heatmaps imports neither timm
    nor torchvision nor torch._dynamo (seconds of a warm run on a CPU); the report's heatmaps need the network."""
    transferlab.train(colour_folder, out=tmp_path / "cold", epochs=2, quiet=True)
    code = (
        "import sys\n"
        "from transferlab.cli.app import main\n"
        f"sys.argv = ['transferlab', '--quiet', 'train', {str(colour_folder)!r}, '--epochs', '2', "
        f"'--explain', '0', '--out', {str(tmp_path / 'warm')!r}]\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print(sorted({'timm', 'torchvision', 'torch._dynamo'} & set(sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "warm" / "summary.json").read_text() == (tmp_path / "cold" / "summary.json").read_text()


def test_confidence_check_reuses_the_extract_strategy_features(colour_folder):
    """The extract strategy hands its split's features to the confidence check, which then reads nothing again;
    the fitted check equals the one fitted from features read back from the cache."""
    from transferlab.core.config import FitConfig, TrainOptions
    from transferlab.data.dataset import load_dataset
    from transferlab.runs.pipeline import fit_confidence_check
    from transferlab.strategies import run_strategy

    (colour_folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 2000)
    result = run_strategy("extract", load_dataset(colour_folder), TrainOptions(fit=FitConfig(epochs=2), quiet=True))
    assert len(result.split_features["train"]) == len(result.split.train)
    fit_confidence_check(result.classifier, result.split, 0, known=result.split_features)
    reused = result.classifier.confidence
    fit_confidence_check(result.classifier, result.split, 0)
    read_again = result.classifier.confidence
    assert reused.to_json() == read_again.to_json()
    np.testing.assert_array_equal(reused.reference, read_again.reference)

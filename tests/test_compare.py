"""`compare` (API and CLI) and the `augment-preview` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import folder_contents, write_colour_classes
from PIL import Image
from typer.testing import CliRunner

from transferlab.runs import compare as compare_module
from transferlab.api import compare
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError


@pytest.fixture(scope="module")
def colours(tmp_path_factory) -> Path:
    return write_colour_classes(tmp_path_factory.mktemp("colours"), 12)


@pytest.fixture(scope="module")
def compared(colours, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "out"
    return compare(colours, ["extract", "augment", "scratch"], out=out, epochs=4, finetune={"views": 1}, quiet=True)


def test_compare_writes_its_report(compared):
    page = (compared.out / "report.html").read_text(encoding="utf-8")
    assert all(strategy in page for strategy in ("extract", "augment", "scratch"))


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_compare_writes_one_row_and_one_run_folder_per_strategy(compared):
    rows = read_csv(compared.out / "compare.csv")
    assert [row["strategy"] for row in rows] == ["extract", "augment", "scratch"]
    for row in rows:
        assert {"test_accuracy", "top5_accuracy", "train_seconds", "extract_seconds", "total_seconds",
                "images_per_second"} <= set(row)
        metrics = json.loads((compared.out / row["run_dir"] / "metrics.json").read_text())
        assert float(row["test_accuracy"]) == pytest.approx(metrics["test_accuracy"])


def test_every_strategy_sees_the_same_split(compared):
    splits = {(compared.out / s / "split.csv").read_text() for s in ("extract", "augment", "scratch")}
    assert len(splits) == 1 and splits == {(compared.out / "split.csv").read_text()}


def test_scratch_keeps_its_own_backbone_in_a_comparison(compared):
    assert [row["backbone"] for row in compared.rows] == ["efficientnet_lite0", "efficientnet_lite0", "small_cnn"]


def test_compare_writes_markdown_table_and_overlay_plots(compared):
    markdown = (compared.out / "compare.md").read_text()
    assert "| strategy |" in markdown and markdown.count("\n| ") == 4  # header + three strategies
    for name in ("compare_accuracy.png", "compare_loss.png"):
        assert Image.open(compared.out / name).size[0] > 100


def test_compare_rejects_an_unknown_strategy_before_training(colours, tmp_path):
    with pytest.raises(TransferlabError, match="unknown strategy 'magic'"):
        compare(colours, ["extract", "magic"], out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out" / "extract").exists()


def test_a_failed_compare_rerun_leaves_the_old_comparison_untouched(colours, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    compare(colours, ["extract"], out=out, epochs=2, quiet=True)
    before = folder_contents(out)
    real_train = compare_module.train

    def scratch_fails(data, settings, console=None, **keywords):
        if settings.strategy == "scratch":  # after extract's run is written: the rerun fails midway
            raise RuntimeError("the machine lost power")
        return real_train(data, settings, console, **keywords)

    monkeypatch.setattr(compare_module, "train", scratch_fails)
    with pytest.raises(RuntimeError, match="lost power"):
        compare(colours, ["extract", "scratch"], out=out, overwrite=True, epochs=2, quiet=True)
    assert folder_contents(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["cmp"]  # nothing half-written beside it


def test_a_compare_rerun_replaces_the_old_comparison_when_complete(colours, tmp_path):
    out = tmp_path / "cmp"
    compare(colours, ["extract"], out=out, epochs=2, quiet=True)
    (out / "extract" / "stale.txt").write_text("from the first comparison")
    comparison = compare(colours, ["augment"], out=out, overwrite=True, epochs=2, finetune={"views": 1}, quiet=True)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["augment"]
    assert comparison.out == out and comparison.classifiers["augment"].run_dir == out / "augment"
    # what the runs record names where they are now, not the staging folder they were written in
    assert json.loads((out / "augment" / "config.json").read_text())["split_csv"] == str(out / "split.csv")
    assert str(out / "augment") in (out / "augment" / "report.html").read_text(encoding="utf-8")
    assert ".partial-" not in (out / "report.html").read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["cmp"]


def test_cli_compare_writes_the_tables(colours, tmp_path):
    result = CliRunner().invoke(
        app, ["--json", "compare", str(colours), "--strategies", "extract,augment", "--views", "1",
              "--epochs", "3", "--out", str(tmp_path / "cmp")],
    )
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "cmp" / "compare.csv")
    assert [row["strategy"] for row in rows] == ["extract", "augment"]
    assert json.loads(result.stdout)["out"] == str(tmp_path / "cmp")


def test_cli_train_runs_a_named_strategy(colours, tmp_path):
    result = CliRunner().invoke(
        app, ["--quiet", "train", str(colours), "--strategy", "augment", "--views", "1", "--epochs", "3",
              "--out", str(tmp_path / "run")],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["views"] == 1


def test_cli_augment_preview_writes_a_grid_and_the_variants(colours, tmp_path):
    result = CliRunner().invoke(
        app, ["augment-preview", str(colours / "red"), "--n", "3", "--out", str(tmp_path / "preview"),
              "--save-prefix", "aug", "--save-format", "png"],
    )
    assert result.exit_code == 0, result.output
    grid = Image.open(tmp_path / "preview" / "img_000-augmented.png")
    assert grid.size == (2 * 224, 2 * (224 + 16))  # original + 3 variants on a 2x2 grid of 224 px tiles
    saved = sorted(p.name for p in (tmp_path / "preview").glob("aug_*.png"))
    assert saved == ["aug_0_0.png", "aug_1_1.png", "aug_2_2.png"]

"""report.html: one self-contained, escaped page for a run folder or a compare folder."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, write_colour_images
from markupsafe import escape
from PIL import Image
from typer.testing import CliRunner

import transferlab
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError
from transferlab.core.history import History
from transferlab.reports.plots import save_comparison_curves
from transferlab.reports.report import REPORT, run_context, write_report

TRICKY_CLASS = '<b>x&y "q"'  # a folder name (no "/" on Linux) that would be markup if it were not escaped
ESCAPED_CLASS = str(escape(TRICKY_CLASS))
DATA_URI = re.compile(r'src="data:image/(jpeg|png);base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory) -> Path:
    """A compare folder as `transferlab compare` writes it: two runs on one split, compare.csv and plots.

    Five classes, two of them nearly the same red, one epoch at a low learning rate: some test images are wrong.
    """
    root = tmp_path_factory.mktemp("report")
    data = root / "colours"
    for seed, (name, colour) in enumerate({**COLOURS, TRICKY_CLASS: (195, 50, 45)}.items()):
        write_colour_images(data / name, colour, 10, seed=seed)
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    folder = root / "compare"
    for name, head in (("mlp", "mlp"), ("linear", "linear")):
        transferlab.train(data, out=folder / name, head=head, epochs=1, lr=1e-4, quiet=True)
    histories = {d.name: History.read_csv(d / "history.csv").epochs for d in (folder / "mlp", folder / "linear")}
    save_comparison_curves(histories, folder)
    with (folder / "compare.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["strategy", "test_accuracy", "run_dir"])
        for name in histories:
            writer.writerow([name, json.loads((folder / name / "metrics.json").read_text())["test_accuracy"], name])
    return folder


@pytest.fixture(scope="module")
def run_dir(compare_dir) -> Path:
    return compare_dir / "mlp"


@pytest.fixture(scope="module")
def html(run_dir) -> str:
    return (run_dir / REPORT).read_text(encoding="utf-8")


def test_train_writes_the_report_into_the_run_folder(run_dir):
    assert (run_dir / REPORT).is_file()
    assert [p.name for p in run_dir.glob("*.html")] == [REPORT]


def test_report_is_self_contained(html):
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert not re.search(r"url\(|@import|<link|<script[^>]*\bsrc", html, re.IGNORECASE)  # inline scripts only
    assert all(src.startswith("data:") for src in re.findall(r'src="([^"]*)"', html))


def test_report_has_every_section(html):
    for section in ("dataset", "settings", "curves", "metrics", "confusion", "losses", "model", "timings"):
        assert f'id="{section}"' in html
    for text in ("Images per class and split", "Sample images", "Skipped files (1)", "broken.jpg", "Per class",
                 "Most confused pairs", "Top losses", "total parameters", "efficientnet_lite0", "options.fit.lr"):
        assert text in html


def test_class_names_are_escaped(html):
    assert TRICKY_CLASS not in html
    assert ESCAPED_CLASS.startswith("&lt;b&gt;x&amp;y") and ESCAPED_CLASS in html


def test_embedded_images_decode(html, run_dir):
    found = DATA_URI.findall(html)
    kinds = [kind for kind, _ in found]
    heatmaps = len(json.loads((run_dir / "explanations" / "index.json").read_text())["items"])
    assert kinds.count("png") == 3 + heatmaps  # accuracy, loss, confusion matrix, the heatmaps of test images
    assert kinds.count("jpeg") >= 4 * 5  # four samples for each of the five classes, plus top losses
    for kind, payload in found:
        with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
            assert image.format == kind.upper() and min(image.size) > 0


def test_top_losses_are_the_misclassified_test_images(run_dir):
    losses = run_context(run_dir)["top_losses"]
    matrix = np.array(json.loads((run_dir / "metrics.json").read_text())["test"]["confusion_matrix"])
    assert losses["n_wrong"] == matrix.sum() - np.trace(matrix) > 0
    assert all(item["true"] != item["predicted"] and item["image"] for item in losses["items"])
    assert [item["loss"] for item in losses["items"]] == sorted((item["loss"] for item in losses["items"]), reverse=True)


def test_report_notes_images_that_moved_away(run_dir, tmp_path):
    moved = tmp_path / "run"
    shutil.copytree(run_dir, moved)
    config = json.loads((moved / "config.json").read_text())
    config["data"] = str(tmp_path / "gone")
    (moved / "config.json").write_text(json.dumps(config))
    page = write_report(moved).read_text(encoding="utf-8")
    assert "no longer at" in page and "image(s) no longer found" in page
    assert 'id="model"' in page


def test_compare_report_shows_strategies_side_by_side(compare_dir):
    page = write_report(compare_dir).read_text(encoding="utf-8")
    assert "Strategies side by side" in page and "F1 per class" in page
    assert page.index('href="mlp/report.html"') < page.index('href="linear/report.html"')  # compare.csv's order
    assert (compare_dir / "linear" / REPORT).is_file()
    assert len(DATA_URI.findall(page)) >= 2 + 2  # compare curves and one confusion matrix per strategy
    assert ESCAPED_CLASS in page and TRICKY_CLASS not in page


def test_report_of_a_folder_that_is_no_run_is_a_clear_error(tmp_path):
    with pytest.raises(TransferlabError, match="not a transferlab run folder"):
        write_report(tmp_path)


def test_cli_report_command_writes_the_page(run_dir):
    (run_dir / REPORT).unlink()
    result = CliRunner().invoke(app, ["--json", "report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"report": str(run_dir / REPORT)}
    assert (run_dir / REPORT).stat().st_size > 10_000

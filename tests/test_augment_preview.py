"""`augment-preview` previews the augmentation training uses, and refuses what is not a photo."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_colour_images
from PIL import Image
from typer.testing import CliRunner

from transferlab.cli.app import app

runner = CliRunner()


@pytest.fixture
def photo(tmp_path):
    return write_colour_images(tmp_path / "photos", (200, 40, 40), 1, size=96)[0]


def grid_of(tmp_path, photo, preset: str) -> np.ndarray:
    out = tmp_path / preset
    result = runner.invoke(app, ["--json", "augment-preview", str(photo), "--augment", preset, "--n", "3",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["augment"] == preset
    return np.asarray(Image.open(answer["grid"]))


def test_augment_preview_shows_the_preset_training_uses(photo, tmp_path):
    none, light, notebook = (grid_of(tmp_path, photo, preset) for preset in ("none", "light", "notebook"))
    tile = none.shape[1] // 2  # original + 3 variants on a 2x2 grid of square tiles
    assert np.array_equal(none[:tile, tile:], none[:tile, :tile])  # "none": the variant is the original
    assert not np.array_equal(light, none) and not np.array_equal(notebook, light)


def test_augment_preview_rejects_an_unknown_preset_before_reading_the_image(tmp_path):
    result = runner.invoke(app, ["augment-preview", str(tmp_path / "missing.jpg"), "--augment", "heavy"])
    assert result.exit_code != 0
    assert "unknown augmentation 'heavy'" in str(result.exception)


def test_augment_preview_refuses_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    Image.new("RGB", (64, 64)).save(run / "accuracy.png")  # a run folder's first "image" is a plot
    (run / "metrics.json").write_text("{}")
    result = runner.invoke(app, ["augment-preview", str(run), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0 and not (tmp_path / "out").exists()
    assert "is a run folder, not a photo" in str(result.exception)


def test_augment_preview_refuses_a_file_that_is_not_an_image(tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a picture")
    result = runner.invoke(app, ["augment-preview", str(notes), "--out", str(tmp_path / "out")])
    assert result.exit_code != 0
    assert result.exception.message == f"cannot preview {notes}: not an image (UnidentifiedImageError)"

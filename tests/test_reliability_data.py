"""Inputs that must never give a silently wrong result: link loops, duplicated images."""

from __future__ import annotations

import os
import shutil

import pytest
from conftest import COLOURS, write_colour_classes, write_colour_images

import transferlab


def test_symlink_loop_visits_each_file_once(tmp_path):
    root = write_colour_classes(tmp_path / "data", 10)
    os.symlink(".", root / "red" / "self")  # each red image would otherwise appear again at every depth
    os.symlink(root / "green", root / "blue" / "greens")  # and the greens in blue, under another class
    dataset = transferlab.dataset(root)
    paths = [p for subset in dataset.subsets().values() for p in subset.paths]
    assert len(paths) == len({os.path.realpath(p) for p in paths}) == 30
    duplicates = [s for s in dataset.skipped if s.reason.startswith("duplicate of")]
    assert len(duplicates) == 10 and all("(another class)" in s.reason for s in duplicates)


def test_byte_identical_files_never_in_two_splits(tmp_path):
    root = write_colour_classes(tmp_path / "data", 12)
    for i in range(6):  # copies under new names, as when a folder is merged twice
        shutil.copy(root / "red" / f"img_{i:03d}.jpg", root / "red" / f"copy_{i:03d}.jpg")
    dataset = transferlab.dataset(root, split=(0.5, 0.25, 0.25))
    contents = [p.read_bytes() for subset in dataset.subsets().values() for p in subset.paths]
    assert len(contents) == len(set(contents)) == 36
    # one of each pair is kept (the first by path) and the other names it
    assert sorted((s.path, s.reason) for s in dataset.skipped) == [
        (str(root / "red" / f"img_{i:03d}.jpg"), f"duplicate of red/copy_{i:03d}.jpg (the same class)") for i in range(6)
    ]


def test_a_presplit_copy_of_a_test_image_leaves_train(tmp_path):
    write_colour_classes(tmp_path / "data" / "train", 8)
    for seed, name in enumerate(("red", "green", "blue"), start=10):
        write_colour_images(tmp_path / "data" / "test" / name, COLOURS[name], 4, seed=seed)
    shutil.copy(tmp_path / "data" / "test" / "red" / "img_000.jpg", tmp_path / "data" / "train" / "red" / "leak.jpg")
    dataset = transferlab.dataset(tmp_path / "data")
    assert not any(p.name == "leak.jpg" for p in dataset.train.paths)
    assert [s.reason for s in dataset.skipped] == ["duplicate of test/red/img_000.jpg (another split)"]


def test_duplicates_are_listed_in_skipped_csv(tmp_path):
    root = write_colour_classes(tmp_path / "data", 10)
    shutil.copy(root / "red" / "img_000.jpg", root / "green" / "odd_one.jpg")
    classifier = transferlab.train(root, out=tmp_path / "run", epochs=2, quiet=True)
    skipped = (classifier.run_dir / "skipped.csv").read_text()
    assert "red/img_000.jpg,duplicate of green/odd_one.jpg (another class)" in skipped


@pytest.fixture(autouse=True)
def _no_symlink_support_skip(tmp_path):
    try:
        os.symlink(tmp_path, tmp_path / "probe")
    except OSError as exc:  # some file systems refuse links
        pytest.skip(f"symbolic links unsupported here: {exc}")

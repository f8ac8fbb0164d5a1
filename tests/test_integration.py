"""Integration: the core training path on real photos from ../shared."""

from __future__ import annotations

import json

import pytest

import transferlab

pytestmark = pytest.mark.integration


def test_presplit_folder_without_test_split_evaluates_validation(shared, tmp_path):
    clf = transferlab.train(
        shared / "datasets" / "hymenoptera", out=tmp_path / "run", split={"max_per_class": 40}, epochs=20, lr=1e-3, quiet=True
    )
    metrics = json.loads((clf.run_dir / "metrics.json").read_text())
    assert metrics["test_is_validation"] is True
    assert metrics["n_test"] == metrics["n_val"]
    assert metrics["test_accuracy"] >= 0.85  # ants vs bees on ImageNet features


def test_split_list_files_train_on_caltech_classes(shared, tmp_path):
    classes = ["accordion", "dollar_bill", "pagoda", "yin_yang"]
    clf = transferlab.train(
        shared / "datasets" / "caltech101", split={"include": classes}, out=tmp_path / "run", epochs=20, lr=1e-3, quiet=True
    )
    metrics = clf.metrics
    assert json.loads((clf.run_dir / "config.json").read_text())["layout"] == "lists"
    assert clf.classes == sorted(classes)
    assert metrics["test_accuracy"] >= 0.9
    test = transferlab.dataset(shared / "datasets" / "caltech101", split_csv=clf.run_dir / "split.csv").test
    pagodas = [p for p, y in zip(test.paths, test.labels) if clf.classes[y] == "pagoda"]
    predictions = clf.predict(pagodas, top_k=1)
    assert sum(p.label == "pagoda" for p in predictions) >= len(predictions) - 1

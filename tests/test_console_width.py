"""The tables people read at the end of a command stay readable at 80 and 120 columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from transferlab.model.prediction import Prediction, short_source
from transferlab.runs.compare import Comparison, short_backbone

COMBINED = "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2"


def rendered(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text()


def comparison() -> Comparison:
    names = [("extract-efficientnet_lite0", "efficientnet_lite0"), ("augment-efficientnet_lite0", "efficientnet_lite0"),
             (f"extract-{COMBINED.replace('+', '_')}-linear", COMBINED), ("scratch", "small_cnn")]
    rows = [dict(strategy=name, backbone=backbone, test_accuracy=0.9581, top5_accuracy=0.991, train_seconds=12.3,
                 extract_seconds=230.1, total_seconds=262.4, images_per_second=82) for name, backbone in names]
    return Comparison(Path("runs/auto"), rows, {})


@pytest.mark.parametrize("width", [80, 120])
def test_compare_table_shows_every_candidate_name_and_its_accuracy_in_full(width):
    text = rendered(comparison(), width)
    assert max(map(len, text.splitlines())) <= width
    for name, backbone in [("extract", "efficientnet_lite0"), ("augment", "efficientnet_lite0"),
                           ("extract-linear", "lite0+lite1+lite2"), ("scratch", "small_cnn")]:
        assert any(name in line and backbone in line and "95.8%" in line for line in text.splitlines()), (name, text)
    assert "…" not in text
    assert ("extraction s" in text) == (width >= 100)  # the timings give way first


def test_a_shared_family_prefix_is_said_once():
    assert short_backbone(COMBINED) == "lite0+lite1+lite2"
    assert short_backbone("efficientnet_lite0") == "efficientnet_lite0"
    assert short_backbone("resnet50+efficientnet_lite0") == "resnet50+efficientnet_lite0"


@pytest.mark.parametrize("width", [80, 120])
def test_predict_table_shows_which_image_each_row_is_about(width):
    root = "/home/someone/projects/a-rather-long-folder-name/demo_data/digits/test"
    predictions = [Prediction(source=f"{root}/{digit}/img_{i:04d}.png", top=[(str(digit), 0.93), ("7", 0.04)])
                   for i, digit in enumerate([3, 5, 8])]
    lines = rendered(Prediction.table(predictions), width).splitlines()
    for i, digit in enumerate([3, 5, 8]):
        assert any(f"{digit}/img_{i:04d}.png" in line for line in lines)
    assert short_source(f"{root}/3/img_0000.png") == "…/3/img_0000.png" and short_source("a.jpg") == "a.jpg"


@pytest.mark.parametrize("width", [80, 120])
def test_auto_table_shows_each_candidates_score_and_how_it_was_obtained(width):
    from transferlab.runs.auto import Attempt, choice_table

    combined = COMBINED.replace("+", "_")
    attempts = [Attempt("extract-efficientnet_lite0", "extract", "efficientnet_lite0", 89, seconds=95.2,
                        cv_accuracy=0.9412, cv_std=0.0061, folds=5, status="cross-validated"),
                Attempt(f"extract-{combined}-linear", "extract", COMBINED, 70, seconds=80.4, cv_accuracy=0.9581,
                        cv_std=0.0043, folds=5, val_accuracy=0.9603, status="trained"),
                Attempt("finetune-efficientnet_lite0-all", "finetune", "efficientnet_lite0", 300, seconds=290.0,
                        val_accuracy=0.9612, status="trained", reason="training stopped where the budget ran out"),
                Attempt("augment-efficientnet_lite0", "augment", "efficientnet_lite0", 300,
                        reason="estimated 300 s, 20 s of the budget left")]
    text = rendered(choice_table(attempts, attempts[1]), width)
    assert max(map(len, text.splitlines())) <= width and "…" not in text
    for name, backbone, score in [("extract", "efficientnet_lite0", "cv 94.1% ± 0.6%"),
                                  ("extract-linear", "lite0+lite1+lite2", "cv 95.8% ± 0.4%"),
                                  ("finetune-all", "efficientnet_lite0", "val 96.1%"),
                                  ("augment", "efficientnet_lite0", "skipped")]:
        assert any(name in line and backbone in line and score in line for line in text.splitlines()), (name, text)

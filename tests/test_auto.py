"""--strategy auto: candidates within a time budget, chosen on validation with a noise margin."""

from __future__ import annotations

import json
import time

import pytest

import transferlab
from conftest import folder_contents
from transferlab.core.config import parse_duration
from transferlab.core.errors import TransferlabError
from transferlab.model.selection import CrossValidation
from transferlab.runs import auto
from transferlab.runs.auto import Attempt, better, standard_error, train_auto
from transferlab.runs.auto_cost import AUGMENTED_VIEW_COST, CPU_CANDIDATES, RUN_SECONDS, Candidate, CostModel


def test_a_tiny_budget_trains_only_the_cheapest_candidate_and_logs_the_rest(colour_folder, tmp_path):
    classifier = transferlab.train(colour_folder, strategy="auto", budget=1, out=tmp_path / "auto", epochs=3,
                                   quiet=True)
    record = json.loads((tmp_path / "auto" / "auto.json").read_text())
    trained = [c for c in record["candidates"] if c["status"] == "trained"]
    skipped = [c for c in record["candidates"] if c["status"] == "skipped"]
    assert [c["label"] for c in trained] == ["extract-efficientnet_lite0"] == [record["chosen"]]
    assert len(skipped) == len(CPU_CANDIDATES) - 1 and all("of the budget left" in c["reason"] for c in skipped)
    # OUT is a run folder of the chosen model: it loads and predicts like any other
    assert classifier.backbone == "efficientnet_lite0" and classifier.metrics["auto"]["chosen"] == record["chosen"]
    image = next((colour_folder / "red").glob("*.jpg"))
    assert transferlab.load(tmp_path / "auto").predict([image], top_k=1)[0].top[0][0] == "red"
    assert (tmp_path / "auto" / "compare.csv").is_file() and (tmp_path / "auto" / "report.html").is_file()


LITE0 = Candidate("extract", "efficientnet_lite0")
LITE0_LINEAR = Candidate("extract", "efficientnet_lite0", head="linear")


def test_a_failed_auto_rerun_leaves_the_old_folder_untouched(colour_folder, tmp_path, monkeypatch):
    out = tmp_path / "auto"
    train_auto(colour_folder, budget=600, out=out, epochs=2, candidates=(LITE0,), quiet=True)
    before = folder_contents(out)
    real_train = auto.train

    def linear_fails(data, settings, *args, **keywords):
        if settings.head.kind == "linear":  # the run of the chosen head, after both were cross-validated
            raise RuntimeError("the machine lost power")
        return real_train(data, settings, *args, **keywords)

    monkeypatch.setattr(auto, "train", linear_fails)
    monkeypatch.setattr(auto, "cross_validated", lambda options, *args: CrossValidation((0.5 + (options.head == "linear"),)))
    with pytest.raises(RuntimeError, match="lost power"):
        train_auto(colour_folder, budget=600, out=out, overwrite=True, epochs=2, candidates=(LITE0, LITE0_LINEAR),
                   quiet=True)
    assert folder_contents(out) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_an_auto_rerun_replaces_the_old_folder_when_complete(colour_folder, tmp_path):
    out = tmp_path / "auto"
    train_auto(colour_folder, budget=600, out=out, epochs=2, candidates=(LITE0,), quiet=True)
    classifier = train_auto(colour_folder, budget=600, out=out, overwrite=True, epochs=2, candidates=(LITE0_LINEAR,),
                            quiet=True)
    assert [p.name for p in (out / "candidates").iterdir()] == [LITE0_LINEAR.label]
    assert classifier.run_dir == out and json.loads((out / "auto.json").read_text())["chosen"] == LITE0_LINEAR.label
    assert json.loads((out / "config.json").read_text())["split_csv"] == str(out / "split.csv")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_auto_explains_only_the_chosen_candidate(colour_folder, tmp_path):
    out = tmp_path / "auto"
    train_auto(colour_folder, budget=600, out=out, epochs=2, candidates=(LITE0, LITE0_LINEAR), explain=2, quiet=True)
    chosen = out / "candidates" / json.loads((out / "auto.json").read_text())["chosen"]
    assert len(json.loads((out / "explanations" / "index.json").read_text())["items"]) == 2
    assert "Where the model looked" in (chosen / "report.html").read_text()
    assert [p.parent for p in (out / "candidates").glob("*/explanations")] == [chosen]


def test_auto_prints_a_line_per_candidate_and_only_the_chosen_runs_epilogue(colour_folder, tmp_path):
    from io import StringIO

    from rich.console import Console

    printed = StringIO()
    out = tmp_path / "auto"
    train_auto(colour_folder, budget=600, out=out, epochs=2, candidates=(LITE0, LITE0_LINEAR),
               console=Console(file=printed, width=120))
    text = printed.getvalue()
    # heads on cached features: a cross-validation score each, then the best one trained and validated
    assert f"auto: {LITE0.label}: 5-fold cv" in text and f"auto: {LITE0_LINEAR.label}: 5-fold cv" in text
    assert text.count(": validation accuracy") == 1
    assert text.count("next:") == 1 and text.count("report:") == 1
    assert f"transferlab predict {out} IMAGE" in text and "candidates/" not in text.split("auto chose")[1]


def test_a_costlier_candidate_wins_only_beyond_one_standard_error():
    chosen = Attempt("cheap", "extract", "a", 10, val_accuracy=0.90, status="trained")
    margin = standard_error(0.90, 400)  # 1.5 points on 400 validation images
    assert not better(Attempt("dear", "extract", "b", 50, val_accuracy=0.90 + margin * 0.9), chosen, 400)
    assert better(Attempt("dear", "extract", "b", 50, val_accuracy=0.90 + margin * 1.1), chosen, 400)


def test_cost_estimates_use_each_backbones_measured_speed():
    cost = CostModel(n_train=700, n_validation=150, n_test=150)
    lite0, lite2 = Candidate("extract", "efficientnet_lite0"), Candidate("extract", "efficientnet_lite2")
    cost.record(lite0, {"images_per_second": 100.0, "extract_seconds": 10.0}, seconds=35.0)
    assert cost.run_seconds == 25.0  # what the run cost besides extraction, measured
    augment = Candidate("augment", "efficientnet_lite0", views=3)
    assert cost.estimate(augment) == pytest.approx(25.0 + 700 * 3 * AUGMENTED_VIEW_COST / 100)  # plain ones cached
    # an unmeasured trunk: scaled by FLOPs from the measured one (lite2 has 1.72 / 0.77 of lite0's); a head on
    # features is cross-validated on train + validation, the test images wait for the chosen one's run
    assert cost.estimate(lite2) == pytest.approx(850 * 1.72 / 0.77 / 100 + cost.cross_validation(lite2))
    cost.record(lite2, {"images_per_second": 50.0, "extract_seconds": 20.0}, seconds=30.0)
    assert cost.per_image("efficientnet_lite2") == 1 / 50 and cost.run_seconds == 25.0
    cost.record(augment, {"images_per_second": 30.0, "extract_seconds": 60.0}, seconds=90.0)
    finetune = Candidate("finetune", "efficientnet_lite0", views=3)
    assert cost.estimate(finetune) > cost.estimate(augment) + RUN_SECONDS  # augment's cached views are not its own


def test_a_run_past_its_deadline_trains_one_epoch_and_says_why(colour_folder, tmp_path):
    classifier = transferlab.train(colour_folder, out=tmp_path / "run", epochs=5,
                                   fit={"patience": None, "deadline": time.time()}, quiet=True)
    assert classifier.metrics["epochs_run"] == 1
    assert "the time budget ran out" in classifier.metrics["stop_reason"]
    assert "deadline" not in json.loads((tmp_path / "run" / "config.json").read_text())["options"]["fit"]


def test_a_deadline_is_refused_where_ray_train_would_ignore_it(colour_folder):
    with pytest.raises(TransferlabError, match="Ray Train workers do not see it"):
        transferlab.train(colour_folder, strategy="scratch", engine="ray", fit={"deadline": 1e9}, quiet=True)


@pytest.mark.integration
def test_auto_picks_the_clearly_better_candidate(shared, tmp_path):
    candidates = (Candidate("scratch", "small_cnn"), Candidate("extract", "efficientnet_lite0"))
    classifier = train_auto(shared / "datasets" / "hymenoptera", budget=600, out=tmp_path / "auto", epochs=8,
                            split={"max_per_class": 25}, candidates=candidates, quiet=True)
    record = classifier.metrics["auto"]
    assert [c["status"] for c in record["candidates"]] == ["trained", "trained"]
    assert record["chosen"] == "extract-efficientnet_lite0"


def test_budget_durations_read_like_people_write_them():
    assert [parse_duration(v) for v in ("90", "90s", "10m", "1.5h")] == [90, 90, 600, 5400]
    with pytest.raises(TransferlabError, match="invalid duration"):
        parse_duration("soon")


def test_a_budget_without_auto_is_refused(colour_folder):
    with pytest.raises(TransferlabError, match="budget applies to --strategy auto only"):
        transferlab.train(colour_folder, budget=60, quiet=True)


def test_auto_from_the_cli_with_a_budget(colour_folder, tmp_path):
    from typer.testing import CliRunner

    from transferlab.cli.app import app

    result = CliRunner().invoke(app, ["--quiet", "train", str(colour_folder), "--strategy", "auto", "--budget", "1s",
                                      "--epochs", "2", "--out", str(tmp_path / "auto")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "auto" / "auto.json").read_text())["budget_seconds"] == 1.0

"""What the console keeps after training: the per-epoch table, why training stopped, the fine-tuning verdict,
the report and the next commands (and nothing of it under --quiet or --json)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_colour_classes
from rich.console import Console
from typer.testing import CliRunner

from transferlab.cli.app import app
from transferlab.core.config import FitConfig
from transferlab.core.history import History
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import Tracker, describe_stop, fit
from transferlab.runs.console import epoch_table, finetune_line, shown_epochs
from transferlab.strategies.finetune import Phases

runner = CliRunner()


def epochs(n: int, best: int) -> list[dict]:
    return [{"epoch": e, "loss": 1 / e, "accuracy": 0.5, "val_loss": abs(e - best) + 0.1, "val_accuracy": 0.5,
             "seconds": 0.1} for e in range(1, n + 1)]


def rendered(renderable) -> str:
    console = Console(record=True, width=120)
    console.print(renderable)
    return console.export_text()


def test_short_runs_show_every_epoch_and_mark_the_best():
    text = rendered(epoch_table(epochs(5, 3), best_epoch=3))
    assert [line.split()[1] for line in text.splitlines() if line.startswith("│")] == ["1", "2", "3", "4", "5"]
    assert "3 best" in text and "val_accuracy" in text and "seconds" in text


def test_long_runs_show_every_nth_epoch_plus_the_best_and_the_last():
    shown, step = shown_epochs(100, best_epoch=57)
    assert step > 1 and len(shown) <= 21
    assert {1, 57, 100} <= set(shown) and shown == sorted(shown)
    text = rendered(epoch_table(epochs(100, 57), best_epoch=57))
    assert "57 best" in text and f"one epoch in {step} shown, plus the best and the last" in text


def blobs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(90) % 3
    return torch.randn(90, 8, generator=generator) + 3 * torch.nn.functional.one_hot(y, 8).float(), y


def test_early_stopping_says_at_which_epoch_why_and_which_epoch_was_kept():
    torch.manual_seed(0)
    history = fit(build_head(HeadConfig("mlp", 8, 3)), blobs(), blobs(1),
                  FitConfig(epochs=60, lr=0.5, optimizer="sgd", patience=3), n_classes=3, quiet=True)
    assert history.stopped_early
    assert history.stop_reason == (f"stopped early at epoch {len(history.epochs)} (no val_loss improvement for 3 "
                                   f"epochs), best epoch {history.best_epoch} kept")


def test_a_run_that_used_every_epoch_says_so():
    history = fit(build_head(HeadConfig("linear", 8, 3)), blobs(), blobs(1), FitConfig(epochs=2, patience=None),
                  n_classes=3, quiet=True)
    assert history.stop_reason == f"ran all 2 epochs, best epoch {history.best_epoch} kept"


def test_ray_trained_runs_say_how_many_epochs_they_planned_and_why_they_stopped(tmp_path):
    """Ray Train's driver turns the workers' trackers into the run's history (here recorded without a cluster):
    the epochs planned, the patience and the stop reason reach it as they do from the local loop."""
    pytest.importorskip("ray")
    import transferlab
    from transferlab.engines import ray_training as ray_train
    from transferlab.core.config import TrainOptions

    class RecordingPlacement:  # stands in for ray_train.Placement: each phase recorded as train_phase records it
        def run(self, job):
            trackers = []
            for phase in job.phases:
                tracker, rows = Tracker.of(phase.config), iter(epochs(phase.config.epochs, best=2))
                while not tracker.done():
                    tracker.record(next(rows), job.network)
                trackers.append(tracker)
            return trackers, {}

    options = TrainOptions(backbone="small_cnn", recipe="default", fit=FitConfig(epochs=10, patience=2), quiet=True)
    split = transferlab.dataset(write_colour_classes(tmp_path / "data", 8))
    history = ray_train.scratch(split, options, RecordingPlacement()).history
    assert (history.planned_epochs, history.patience, len(history.epochs)) == (10, 2, 4)
    assert history.stop_reason == "stopped early at epoch 4 (no val_loss improvement for 2 epochs), best epoch 2 kept"


def test_a_resumed_tracker_trains_to_the_new_runs_plan():
    module = torch.nn.Linear(1, 1)
    tracker = Tracker.of(FitConfig(epochs=2, patience=None))
    for row in epochs(2, best=2):
        tracker.record(row, module)
    assert tracker.done()
    resumed = tracker.replanned(FitConfig(epochs=3, patience=None))
    assert not resumed.done() and resumed.planned_epochs == 3 and len(resumed.epochs) == 2
    assert tracker.replanned(FitConfig(epochs=3, patience=1)).done() is False  # it improved on its last epoch


def test_fine_tuning_stop_reason_names_both_phases_in_the_combined_numbering():
    first = History(epochs(4, 4), best_epoch=4, planned_epochs=4)
    first.stop_reason = describe_stop(first)
    second = History(epochs(3, 1), best_epoch=1, stopped_early=True, patience=2)
    phases = Phases(None, None, first, None, second, {})
    assert phases.history().stop_reason == (
        "head: ran all 4 epochs, best epoch 4 kept; fine-tuning: stopped early at epoch 7 (no val_loss improvement "
        "for 2 epochs), best epoch 5 kept")


def test_fine_tuning_verdict_says_which_model_was_kept():
    rows = epochs(6, 5)  # phase 1: epochs 1-3 (best val_loss 2.1), phase 2: epochs 4-6 (best 0.1)
    improved = finetune_line({"phase1_epochs": 3, "finetune_improved": True}, rows)
    assert improved.startswith("fine-tuning improved on the frozen head") and "fine-tuned model is kept" in improved
    worse = finetune_line({"phase1_epochs": 3, "finetune_improved": False}, epochs(6, 2))
    assert worse.startswith("fine-tuning did not improve") and "frozen head is kept" in worse
    assert finetune_line({"best_epoch": 3}, rows) is None  # not a fine-tuning run


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_colour_classes(tmp_path_factory.mktemp("console") / "data", 12)


def test_train_keeps_an_epoch_table_says_why_it_stopped_and_what_to_run_next(data, tmp_path):
    run = tmp_path / "run"
    result = runner.invoke(app, ["train", str(data), "--out", str(run), "--epochs", "4", "--lr", "0.003"],
                           terminal_width=120)
    assert result.exit_code == 0, result.output
    text = result.stderr
    assert "val_accuracy" in text and "│ 4" in text  # the table outlives the progress bar
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stop_reason"] == f"ran all 4 epochs, best epoch {metrics['best_epoch']} kept"
    assert metrics["stop_reason"] in text
    assert str(run / "report.html") in text
    assert f"transferlab predict {run} IMAGE" in text and f"transferlab serve {run}" in text
    assert metrics["stop_reason"] in (run / "report.html").read_text()  # the report says it too


def test_json_train_prints_only_json_and_no_table(data, tmp_path):
    result = runner.invoke(app, ["--json", "train", str(data), "--out", str(tmp_path / "run"), "--epochs", "2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["run_dir"] == str(tmp_path / "run")
    assert "val_accuracy" not in result.stderr and "transferlab serve" not in result.stderr

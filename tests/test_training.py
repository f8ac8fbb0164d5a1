"""Heads, the training loop, metrics and curves."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from transferlab.core.config import FitConfig
from transferlab.core.errors import TransferlabError
from transferlab.core.history import History
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.metrics import evaluate_probabilities
from transferlab.model.training import PlainAdam, class_weights, fit, torch_optimizer
from transferlab.reports.confusion import most_confused_pairs
from transferlab.reports.plots import save_training_curves, smooth


def blobs(n_per_class=40, n_classes=3, dim=16, seed=0):
    """Gaussian blobs around fixed centres; `seed` draws a new sample of the same problem."""
    centres = np.random.default_rng(123).normal(0, 3, (n_classes, dim))
    rng = np.random.default_rng(seed)
    x = np.concatenate([centres[c] + rng.normal(0, 1, (n_per_class, dim)) for c in range(n_classes)])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def fitted(config: FitConfig, kind="mlp"):
    x, y = blobs()
    torch.manual_seed(config.seed)
    head = build_head(HeadConfig(kind, 16, 3))
    history = fit(head, (x, y), blobs(seed=1), config, n_classes=3, quiet=True)
    return head, history


def test_mlp_head_is_dense_relu_dropout_dense():
    head = build_head(HeadConfig("mlp", 1280, 97))
    kinds = [type(m).__name__ for m in head]
    assert kinds == ["Linear", "ReLU", "Dropout", "Linear"]
    assert head[0].out_features == 256 and head[2].p == 0.5 and head[3].out_features == 97


def test_linear_head_maps_features_to_classes():
    head = build_head(HeadConfig("linear", 32, 2))
    assert head(torch.zeros(4, 32)).shape == (4, 2)


def test_training_learns_separable_classes():
    _, history = fitted(FitConfig(epochs=15, patience=None))
    assert history.epochs[-1]["val_accuracy"] > 0.9
    assert history.epochs[-1]["loss"] < history.epochs[0]["loss"]


@pytest.mark.parametrize("optimizer", ["rmsprop", "adam", "adamw", "sgd"])
def test_every_optimizer_trains(optimizer):
    _, history = fitted(FitConfig(epochs=5, optimizer=optimizer, lr=1e-2, patience=None))
    assert history.epochs[-1]["val_accuracy"] > 0.6


def test_training_is_deterministic_for_a_seed():
    a, ha = fitted(FitConfig(epochs=4, seed=3))
    b, hb = fitted(FitConfig(epochs=4, seed=3))
    assert ha.column("loss") == hb.column("loss")
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_training_progress_shows_the_epoch_and_its_scores(capsys):
    x, y = blobs()  # 120 samples: 4 batches of 32 an epoch
    fit(build_head(HeadConfig("linear", 16, 3)), (x, y), blobs(seed=1), FitConfig(epochs=2, patience=None),
        n_classes=3, description="training probe")
    shown = capsys.readouterr()
    line = next(l for l in (shown.out + shown.err).splitlines() if "training probe" in l)
    assert "epoch 2/2" in line and "val_acc" in line


def test_early_stopping_restores_the_best_epoch_weights():
    x, y = blobs()
    xv, yv = blobs(seed=1)
    torch.manual_seed(0)
    head = build_head(HeadConfig("mlp", 16, 3))
    # A large learning rate makes validation loss climb after a few epochs.
    history = fit(head, (x, y), (xv, yv), FitConfig(epochs=60, lr=0.5, optimizer="sgd", patience=3), n_classes=3, quiet=True)
    assert history.stopped_early
    assert len(history.epochs) == history.best_epoch + 3
    restored = torch.nn.functional.cross_entropy(head(xv), yv).item()
    assert restored == pytest.approx(history.epochs[history.best_epoch - 1]["val_loss"], rel=1e-5)


def test_training_stops_before_an_epoch_that_would_end_after_the_deadline():
    _, late = fitted(FitConfig(epochs=20, patience=None, deadline=time.time()))
    assert len(late.epochs) == 1 and late.out_of_time and late.stopped_early  # one epoch always runs
    assert late.stop_reason == "stopped at epoch 1 (the time budget ran out), best epoch 1 kept"
    _, ample = fitted(FitConfig(epochs=20, patience=None, deadline=time.time() + 3600))
    assert len(ample.epochs) == 20 and not ample.out_of_time


def test_a_deadline_is_a_moment_not_a_setting_of_the_run():
    from transferlab.core.config import TrainOptions

    assert "deadline" not in TrainOptions(fit=FitConfig(deadline=1e9)).to_dict()["fit"]


def test_balanced_class_weights_are_inverse_frequency():
    weights = class_weights(np.array([0, 0, 0, 1]), 2, "balanced")
    assert weights.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1)])
    assert class_weights(np.array([0, 1]), 2, None) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [({"optimizer": "lbfgs"}, "unknown optimizer"), ({"epochs": 0}, "epochs"), ({"lr": 0}, "learning rate"),
     ({"class_weight": "auto"}, "class weight")],
)
def test_bad_training_parameters_are_clear_errors(kwargs, message):
    with pytest.raises(TransferlabError, match=message):
        FitConfig(**kwargs)


def test_history_round_trips_through_csv(tmp_path):
    _, history = fitted(FitConfig(epochs=3, patience=None))
    history.write_csv(tmp_path / "history.csv")
    again = History.read_csv(tmp_path / "history.csv")
    assert again.column("val_loss") == pytest.approx(history.column("val_loss"))


def test_top5_is_reported_only_with_more_than_five_classes():
    probs = np.eye(6)[[0, 1, 2, 3, 4, 5]]
    assert evaluate_probabilities(np.arange(6), probs, list("abcdef"))["top5_accuracy"] == 1.0
    assert evaluate_probabilities(np.arange(3), np.eye(3), list("abc"))["top5_accuracy"] is None


def test_metrics_include_per_class_scores_and_confusion_matrix():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    metrics = evaluate_probabilities(np.array([0, 1, 1]), probs, ["cat", "dog"])
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["confusion_matrix"] == [[1, 0], [1, 1]]
    dog = metrics["per_class"][1]
    assert dog["class"] == "dog" and dog["recall"] == 0.5 and dog["precision"] == 1.0
    assert most_confused_pairs(metrics["confusion_matrix"], ["cat", "dog"]) == [{"true": "dog", "predicted": "cat", "count": 1}]


def test_smoothing_is_the_notebooks_exponential_moving_average():
    assert smooth([1.0, 0.0, 0.0]) == pytest.approx([1.0, 0.8, 0.64])


def test_training_curves_are_written_as_png(tmp_path):
    _, history = fitted(FitConfig(epochs=3, patience=None))
    paths = save_training_curves(history.epochs, tmp_path)
    assert [p.name for p in paths] == ["accuracy.png", "loss.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)


def test_plain_adam_trains_bit_for_bit_as_torch_adam():
    """Heads train with PlainAdam (constant learning rate): the same weights as torch.optim.Adam, step for step,
    with two parameter groups and weight decay."""
    def trained_with(make):
        torch.manual_seed(0)
        head = build_head(HeadConfig("mlp", 16, 3))
        groups = [{"params": list(head[0].parameters()), "lr": 1e-2},
                  {"params": list(head[3].parameters()), "lr": 1e-3}]
        optimizer = make(groups)
        x, y = blobs()
        for _ in range(20):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(head(x), y).backward()
            optimizer.step()
        return head.state_dict()

    plain = trained_with(lambda groups: PlainAdam(groups, weight_decay=1e-3))
    reference = trained_with(lambda groups: torch_optimizer("adam", groups, 1e-2, 1e-3))
    assert all(torch.equal(plain[name], reference[name]) for name in reference)


def test_training_a_head_with_adam_does_not_import_torch_dynamo():
    """torch.optim's optimizers import torch._dynamo (seconds on a small CPU); a warm `train` run's head does not."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from transferlab.model.heads import HeadConfig, build_head\n"
        "from transferlab.core.config import FitConfig\n"
        "from transferlab.model.training import fit\n"
        "x, y = torch.randn(32, 8), torch.randint(0, 2, (32,))\n"
        "fit(build_head(HeadConfig('mlp', 8, 2)), (x, y), (x, y), FitConfig(epochs=2), n_classes=2, quiet=True)\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "False"

"""Data-parallel training on Ray Train (two 1-CPU nodes of a simulated cluster, real photos from ../shared):
2-worker DDP fine-tuning writes a loadable run folder that scores as the single-process run does; a rerun
resumes from the last checkpoint; `compare --engine ray` runs its strategies as Ray tasks."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import link_hymenoptera
from typer.testing import CliRunner

import transferlab
from transferlab.cli.app import app
from transferlab.core.errors import TransferlabError
from transferlab.runs.compare import COLUMNS

pytestmark = [pytest.mark.ray, pytest.mark.integration]
ray = pytest.importorskip("ray")
PER_CLASS = 8
TINY = {"split": (0.5, 0.25, 0.25), "epochs": 2, "finetune": {"epochs": 1, "end_to_end": True}, "quiet": True}


@pytest.fixture(scope="module")
def photos(shared, tmp_path_factory) -> Path:
    """ants/ and bees/, PER_CLASS real photos each (links to ../shared)."""
    return link_hymenoptera(shared, tmp_path_factory.mktemp("photos"), PER_CLASS)


def test_two_worker_ddp_finetuning_writes_a_loadable_run_scoring_as_the_single_process_run(cluster, photos, tmp_path):
    local = transferlab.train(photos, strategy="finetune", out=tmp_path / "local", **TINY)
    on_ray = transferlab.train(photos, strategy="finetune", out=tmp_path / "ray",
                               engine={"name": "ray", "workers": 2, "ray_address": cluster[0].address}, **TINY)
    run = tmp_path / "ray"
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["engine"], metrics["workers"], metrics["finetune_path"]) == ("ray", 2, "end-to-end")
    assert metrics["epochs_run"] == len(on_ray.history.epochs) == local.metrics["epochs_run"]
    assert metrics["stop_reason"].startswith("head: ran all 2 epochs, best epoch ")  # as the local loop says it
    assert "; fine-tuning: ran all 1 epochs, best epoch " in metrics["stop_reason"]
    one_image = 1 / metrics["n_test"]
    assert abs(metrics["test_accuracy"] - local.metrics["test_accuracy"]) <= one_image + 1e-9
    assert {"model.safetensors", "model.json", "report.html", "history.csv"} <= {p.name for p in run.iterdir()}
    loaded = transferlab.load(run)
    images = sorted(photos.rglob("*.jpg"))[:4]
    np.testing.assert_allclose(loaded.predict_proba(images)[0], on_ray.predict_proba(images)[0], atol=1e-5)
    assert not (tmp_path / ".ray.ray-train").exists()  # checkpoints go once the run is written


def test_a_rerun_resumes_from_the_last_checkpoint(cluster, photos, tmp_path):
    from transferlab.backbones.registry import create_backbone
    from transferlab.backbones.trunk import Trunk
    from transferlab.core.config import FitConfig, TrainOptions
    from transferlab.engines import ray_training as ray_train
    from transferlab.engines.ray_extraction import portable
    from transferlab.strategies.base import make_extractor

    paths = [str(p) for p in sorted(photos.rglob("*.jpg"))]
    labels = np.array([0 if "/ants/" in p else 1 for p in paths])
    decoder = make_extractor(TrainOptions(backbone="small_cnn", quiet=True), pretrained=False)

    def job(epochs: int) -> ray_train.Job:
        torch.manual_seed(0)
        trunk = Trunk(create_backbone("small_cnn", pretrained=False), decoder.mean, decoder.std)
        network = torch.nn.Sequential(trunk, torch.nn.LazyLinear(2))
        network(torch.zeros((1, 3, 128, 128), dtype=torch.uint8))  # materialise the lazy layer
        fit = FitConfig(epochs=epochs, batch_size=8, lr=1e-3, optimizer="adam", patience=None, seed=0)
        return ray_train.Job(network, portable(decoder), (paths[::2], labels[::2]), (paths[1::2], labels[1::2]), None, 2,
                             [ray_train.Phase(fit)])

    placement = ray_train.Placement(2, tmp_path / "checkpoints", use_gpu=False)
    (first,), _ = placement.run(job(2))
    (resumed,), _ = placement.run(job(3))  # as if the first attempt had died after epoch 2
    assert [row["epoch"] for row in resumed.epochs] == [1, 2, 3]
    assert resumed.epochs[:2] == first.epochs  # epochs 1-2 come from the checkpoint, not trained again


def test_a_worker_dying_mid_fine_tuning_resumes_from_the_last_checkpoint_and_writes_the_run(
        cluster, photos, tmp_path, monkeypatch):
    """A training worker's process is killed (SIGKILL) at the start of phase 2, once: Ray Train restarts the worker
    group and the run resumes from the phase-1 checkpoint instead of training phase 1 again."""
    from transferlab.engines import ray_training as ray_train

    marker, log = tmp_path / "killed", tmp_path / "worker.log"

    def sabotaged(settings: dict) -> None:  # runs on the workers (a local function: Ray ships it by value)
        import os
        import signal
        import time

        from transferlab.engines import ray_training as on_worker

        rank = ray.train.get_context().get_world_rank()
        real_epoch, real_resumed = on_worker._train_one_epoch, on_worker.resumed
        calls = []

        def resumed():
            saved = real_resumed()
            if rank == 1:
                with log.open("a") as file:
                    file.write(f"start {'none' if saved is None else saved['phase']} {len(saved['tracker'].epochs) if saved else 0}\n")
            return saved

        def one_epoch(*args, **kwargs):
            calls.append(1)
            if rank == 1 and len(calls) == 3 and not marker.exists():  # phase 2's first epoch, first attempt only
                marker.touch()
                time.sleep(15)  # Ray Train has polled rank 0's phase-1 checkpoints (every 2 s) before the crash, even under load
                os.kill(os.getpid(), signal.SIGKILL)
            return real_epoch(*args, **kwargs)

        on_worker.resumed, on_worker._train_one_epoch = resumed, one_epoch
        on_worker.worker_loop(settings)

    monkeypatch.setattr(ray_train, "worker_loop", sabotaged)
    run = tmp_path / "run"
    trained = transferlab.train(photos, strategy="finetune", out=run,
                                engine={"name": "ray", "workers": 2, "ray_address": cluster[0].address}, **TINY)
    assert marker.exists()  # the worker did die
    first, second = log.read_text().splitlines()
    assert first == "start none 0"
    assert second.startswith("start 0 ")  # the restarted group began from a phase-1 checkpoint, not from scratch
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == len(trained.history.epochs) == TINY["epochs"] + TINY["finetune"]["epochs"]
    images = sorted(photos.rglob("*.jpg"))[:2]
    np.testing.assert_allclose(transferlab.load(run).predict_proba(images), trained.predict_proba(images), atol=1e-5)


def test_workers_without_data_parallel_training_is_one_clear_error(photos):
    with pytest.raises(TransferlabError, match="--workers"):
        transferlab.train(photos, strategy="extract", engine={"name": "ray", "workers": 2})


def test_ray_fine_tuning_asks_for_end_to_end(photos):
    with pytest.raises(TransferlabError, match="end to end"):
        transferlab.train(photos, strategy="finetune", engine="ray", finetune={"end_to_end": False})


def test_compare_with_the_ray_engine_writes_the_same_compare_csv_columns(cluster, photos, tmp_path):
    result = CliRunner().invoke(app, [
        "--quiet", "compare", str(photos), "--strategies", "extract,augment", "--views", "1", "--epochs", "3",
        "--split", "0.5,0.25,0.25", "--out", str(tmp_path / "cmp"), "--engine", "ray", "--ray-address", cluster[0].address,
    ])
    assert result.exit_code == 0, result.output
    with (tmp_path / "cmp" / "compare.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert tuple(rows[0]) == COLUMNS and [row["strategy"] for row in rows] == ["extract", "augment"]
    assert all(float(row["test_accuracy"]) > 0 for row in rows)
    assert (tmp_path / "cmp" / "report.html").is_file() and (tmp_path / "cmp" / "augment" / "model.safetensors").is_file()


def test_scratch_on_ray_train_from_the_command_line_writes_a_loadable_run(cluster, photos, tmp_path):
    result = CliRunner().invoke(app, [
        "--quiet", "train", str(photos), "--strategy", "scratch", "--epochs", "1", "--split", "0.5,0.25,0.25",
        "--out", str(tmp_path / "run"), "--engine", "ray", "--workers", "2", "--ray-address", cluster[0].address,
    ])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (metrics["engine"], metrics["workers"], metrics["epochs_run"]) == ("ray", 2, 1)
    assert len(transferlab.load(tmp_path / "run").predict(sorted(photos.rglob("*.jpg"))[:2])) == 2
    # The default recipe standardises inputs per channel, from training images the driver sampled and decoded.
    mean, std = json.loads((tmp_path / "run" / "model.json").read_text())["normalization"]
    assert all(0.05 < m < 0.95 for m in mean) and all(0.02 < s < 0.6 for s in std)

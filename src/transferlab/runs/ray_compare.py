"""`compare --engine ray`: the strategies of a comparison as Ray tasks, in parallel on the cluster.

Each task is one local `transferlab.train` run (one CPU) into its folder under the comparison's, on the split
the driver wrote to split.csv, with the driver's feature cache (content-addressed, so the features one strategy
computes serve the others). The driver reads the finished run folders back, so compare.csv, compare.md, the
plots and the report are the local engine's. On a real cluster the data, the comparison folder and the cache
need the same path on every node (a shared mount), as for the Ray engine's extraction.
This module imports Ray; nothing imports it unless `--engine ray` was chosen.
"""

from __future__ import annotations

import json
from pathlib import Path

import ray

from transferlab.backbones.registry import default_cache_dir
from transferlab.model.classifier import Classifier
from transferlab.runs.pipeline import train
from transferlab.engines.ray_extraction import connect
from transferlab.core.history import History
from transferlab.core.settings import TrainSettings

TASK_CPUS = 1
RETRIES = 2  # a task lost with its node runs again (its run folder appears only when complete)


def train_run(data: str, settings: TrainSettings) -> str:
    """Ray task: one strategy's run; returns its folder."""
    return str(train(data, settings).run_dir)


def train_all(data: str | Path, runs: dict[str, TrainSettings], *, address: str | None = None,
              quiet: bool = False) -> dict[str, Classifier]:
    """Every run of `runs` (name -> its settings) as a Ray task; their classifiers, in order."""
    connect(address, quiet)
    task = ray.remote(num_cpus=TASK_CPUS, max_retries=RETRIES)(train_run)
    refs = {name: task.remote(str(data), settings.updated(
        trunk={"cache_dir": str(settings.trunk.cache_dir or default_cache_dir())},
        quiet=True, overwrite=True,  # a retried task replaces its own half-done attempt
    )) for name, settings in runs.items()}
    return {name: finished_run(Path(ray.get(ref))) for name, ref in refs.items()}


def finished_run(run_dir: Path) -> Classifier:
    """A run folder read back as the classifier `train` returns: metrics, history and folder attached."""
    classifier = Classifier.load(run_dir)
    classifier.run_dir = run_dir
    classifier.metrics = json.loads((run_dir / "metrics.json").read_text())
    classifier.history = History.read_csv(run_dir / "history.csv")
    return classifier

"""The run folder: every artifact of a training run, written so that it can be read and reproduced."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

from transferlab.model.classifier import Classifier
from transferlab.core.files import atomic_write_bytes, disk_full_as_error
from transferlab.core.run_folder import MODEL_JSON, SUMMARY, TEST_PREDICTIONS
from transferlab.reports.report import write_report
from transferlab.strategies.base import StrategyResult
from transferlab.model.summary import summarize_run
from transferlab.reports.model_summary import Summary


VERSIONED_PACKAGES = ("transferlab", "torch", "torchvision", "timm", "onnxruntime", "numpy", "scikit-learn", "pillow")
# A staging folder is named .<destination>.partial-<writer's pid>-<its start time>-<host>-<random>: a later run to
# the same destination tells a killed writer's leftover (removed) from a live writer's folder (kept) by the name.
PARTIAL = re.compile(r"\.(?P<name>.+)\.partial-(?P<pid>\d+)-(?P<started>\d+)-(?P<host>[0-9a-f]{8})-[a-z0-9_]+")
HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=4).hexdigest()


def unique_run_dir(out: str | Path | None, data: str | Path, strategy: str, root: Path = Path("runs")) -> Path:
    """`out` as given, or runs/<data>-<strategy>, runs/<data>-<strategy>-2, ... (never overwrite a run)."""
    if out is not None:
        return Path(out)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).resolve().name) or "data"
    candidate = root / f"{stem}-{strategy}"
    n = 2
    while candidate.exists():
        candidate = root / f"{stem}-{strategy}-{n}"
        n += 1
    return candidate




@contextmanager
def staged(run_dir: Path) -> Iterator[Path]:
    """A temporary sibling folder to write a run (or a folder of runs: compare, auto) into; moved into place
    (replacing any old folder as a whole) only when the block completes, and removed when it fails. So a run
    folder never mixes two runs, and a run that fails (full disk, kill -9) leaves the old one untouched. What a
    killed writer left beside `run_dir` is removed here, by the next run to the same destination."""
    with disk_full_as_error(run_dir):
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(run_dir)
        writer = f"{os.getpid()}-{process_start(os.getpid()) or 0}-{HOST}"
        staging = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.partial-{writer}-"))
    os.chmod(staging, 0o755)  # mkdtemp makes private folders; run folders are meant to be shared
    try:
        with disk_full_as_error(run_dir):
            yield staging
        if run_dir.exists():
            old = Path(tempfile.mkdtemp(dir=run_dir.parent, prefix=f".{run_dir.name}.old-"))
            os.replace(run_dir, old / run_dir.name)
            os.replace(staging, run_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, run_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def final_location(path: str | Path) -> Path:
    """Where `path`, inside a staging folder, will be once that folder is moved into place: what a run records
    (its report's location, config.json's split.csv) names the place it will have, not the one it is written in."""
    return Path(*(match["name"] if (match := PARTIAL.fullmatch(part)) else part for part in Path(path).parts))


def remove_stale_partials(run_dir: Path) -> list[Path]:
    """Remove the staging folders of `run_dir` whose writer is gone (killed mid-run); returns them. Those of a live
    writer, of another destination, and of another host (whose processes cannot be checked from here) are kept."""
    stale = []
    for folder in run_dir.parent.glob(f".{glob.escape(run_dir.name)}.partial-*"):
        match = PARTIAL.fullmatch(folder.name)
        if match and match["name"] == run_dir.name and match["host"] == HOST and \
                writer_gone(int(match["pid"]), int(match["started"])):
            shutil.rmtree(folder, ignore_errors=True)
            stale.append(folder)
    return stale


def writer_gone(pid: int, started: int) -> bool:
    """Whether process `pid` (started at `started`, 0: unknown) no longer runs on this host: no such process, or
    a later one that was given the same pid."""
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would end a Windows process; pid 0 means a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it runs, as another user
    return started != 0 and process_start(pid) not in (None, started)


def process_start(pid: int) -> int | None:
    """When the process started (clock ticks after boot, field 22 of /proc/<pid>/stat): with the pid, it names a
    process uniquely. None where /proc is absent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # fields after the command name, which may hold spaces


def environment() -> dict:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions}


def write_json(path: Path, value) -> Path:
    atomic_write_bytes(path, (json.dumps(value, indent=2, default=str) + "\n").encode())
    return path


@dataclass
class TestPredictions:
    """The test split's class probabilities, computed once after training: one array per view (the image
    itself, then the TTA views), for the images that decoded."""

    paths: list[Path]
    labels: np.ndarray  # int64 [n]
    views: np.ndarray  # [views, n, classes]
    classes: list[str]
    root: Path
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def probabilities(self) -> np.ndarray:
        return self.views.mean(axis=0)

    def write_csv(self, path: Path) -> Path:
        """path (relative to the data root), class, predicted, p_predicted, p_true: one row per image."""
        probabilities = self.probabilities
        predicted = probabilities.argmax(axis=1)
        with path.open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "class", "predicted", "p_predicted", "p_true"])
            for i, image in enumerate(self.paths):
                relative = image.relative_to(self.root).as_posix() if image.is_relative_to(self.root) else str(image)
                writer.writerow([
                    relative, self.classes[self.labels[i]], self.classes[predicted[i]],
                    f"{probabilities[i, predicted[i]]:.6f}", f"{probabilities[i, self.labels[i]]:.6f}",
                ])
        return path


def write_run(
    run_dir: Path, result: StrategyResult, *, config: dict, metrics: dict, test: TestPredictions
) -> dict[str, Path]:
    """config.json, split.csv, skipped.csv, history.csv, metrics.json, test_predictions.csv, summary.json,
    model files and plots."""
    from transferlab.reports.plots import save_confusion_matrix, save_training_curves  # matplotlib only when drawing

    run_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "config": write_json(run_dir / "config.json", {**config, "environment": environment()}),
        "metrics": write_json(run_dir / "metrics.json", metrics),
    }
    result.split.write_split_csv(run_dir / "split.csv")
    result.split.write_skipped_csv(run_dir / "skipped.csv")
    result.history.write_csv(run_dir / "history.csv")
    files.update(split=run_dir / "split.csv", skipped=run_dir / "skipped.csv", history=run_dir / "history.csv")
    files["test_predictions"] = test.write_csv(run_dir / TEST_PREDICTIONS)
    result.classifier.save(run_dir)
    files["model"] = run_dir / "model.safetensors"
    files["summary"] = write_json(run_dir / SUMMARY, model_summary(result.classifier).to_dict())
    accuracy_png, loss_png = save_training_curves(result.history.epochs, run_dir)
    files.update(accuracy_plot=accuracy_png, loss_plot=loss_png)
    files["confusion_plot"] = save_confusion_matrix(
        metrics["test"]["confusion_matrix"], result.split.classes, run_dir / "confusion_matrix.png"
    )
    return files


def model_summary(classifier: Classifier) -> Summary:
    """The Keras-style summary of the trained network, remembered in the cache by everything it depends on
    (building the network to summarise it costs seconds, a large share of a run on cached features)."""
    extractor = classifier.extractor
    identity = json.dumps([extractor.key, classifier.head_config.to_dict(), classifier.strategy], sort_keys=True)
    path = extractor.cache_dir / "summaries" / f"{hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()}.json"
    if path.is_file():
        try:
            return Summary.from_dict(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError):
            pass  # a damaged entry is recomputed and replaced
    summary = summarize_run(classifier)
    write_json(path, summary.to_dict())
    return summary


def write_run_report(folder: str | Path) -> Path:
    """report.html of a run or compare folder; a run folder from before summaries were recorded gets its summary
    built from its model (seconds)."""
    folder = Path(folder)
    is_old_run = (folder / MODEL_JSON).is_file() and not (folder / SUMMARY).is_file()
    return write_report(folder, summary=summarize_run(folder) if is_old_run else None)

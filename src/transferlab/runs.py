"""The run folder: every artifact of a training run, written so that it can be read and reproduced."""

from __future__ import annotations

import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from transferlab.features import atomic_write_bytes
from transferlab.strategies.base import StrategyResult

VERSIONED_PACKAGES = ("transferlab", "torch", "torchvision", "timm", "onnxruntime", "numpy", "scikit-learn", "pillow")


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


def write_run(run_dir: Path, result: StrategyResult, *, config: dict, metrics: dict) -> dict[str, Path]:
    """config.json, split.csv, skipped.csv, history.csv, metrics.json, model files and plots."""
    from transferlab.plots import plot_confusion_matrix, plot_training_curves  # matplotlib only when drawing

    run_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "config": write_json(run_dir / "config.json", {**config, "environment": environment()}),
        "metrics": write_json(run_dir / "metrics.json", metrics),
    }
    result.split.write_split_csv(run_dir / "split.csv")
    result.split.write_skipped_csv(run_dir / "skipped.csv")
    result.history.write_csv(run_dir / "history.csv")
    files.update(split=run_dir / "split.csv", skipped=run_dir / "skipped.csv", history=run_dir / "history.csv")
    result.classifier.save(run_dir)
    files["model"] = run_dir / "model.safetensors"
    accuracy_png, loss_png = plot_training_curves(result.history.epochs, run_dir)
    files.update(accuracy_plot=accuracy_png, loss_plot=loss_png)
    files["confusion_plot"] = plot_confusion_matrix(
        metrics["test"]["confusion_matrix"], result.split.classes, run_dir / "confusion_matrix.png"
    )
    return files

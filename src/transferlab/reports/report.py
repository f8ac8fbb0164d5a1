"""report.html: one self-contained page (inline CSS, images embedded as base64) for a run or a compare folder.

A run report shows the data set (class counts, sample images, skipped files), the settings, the training
curves, the test metrics, the most confused classes, the top losses, the model summary and the timings.
A compare folder (it holds compare.csv and one run folder per strategy) gets the strategies side by side.
Opened from disk, the page needs no server and no network.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

from transferlab.core.files import atomic_write_bytes
from transferlab.core.run_folder import EXPLANATIONS, REPORT, SUMMARY, TEST_PREDICTIONS, read_run_json
from transferlab.reports.confusion import most_confused_pairs, most_confused_submatrix
from transferlab.reports.html import (
    jinja_environment,
    now_text,
    percent,
    png_uri,
    png_uris,
    read_csv_rows,
    read_lines,
    thumbnail_uri,
)
from transferlab.reports.model_summary import Summary

SPLIT_COLUMNS = ("train", "validation", "test")
SAMPLES_PER_CLASS = 4
MAX_SAMPLE_CLASSES = 40
MAX_TOP_LOSSES = 16
MAX_SKIPPED_ROWS = 200
MANY_CLASSES = 30  # above this, the full confusion matrix is an overview and its most confused part is shown
CONFUSED_CLASSES = 20  # classes in that part


def write_report(directory: str | Path, location: Path | None = None, summary: Summary | None = None) -> Path:
    """Write `report.html` into a run folder, or into a compare folder (detected by its compare.csv), from the
    files in it alone. `location` is where the folder will be, when it is written elsewhere first; `summary`
    stands in for a run folder's summary.json where it has none."""
    folder = Path(directory)
    if (folder / "compare.csv").is_file():
        html = jinja_environment().get_template("compare.html.j2").render(**compare_context(folder, location))
    else:
        html = jinja_environment().get_template("run.html.j2").render(**run_context(folder, location, summary))
    path = folder / REPORT
    atomic_write_bytes(path, html.encode("utf-8"))
    return path


# -- run report -----------------------------------------------------------------------------------
def run_context(run: Path, location: Path | None = None, summary: Summary | None = None) -> dict:
    """Everything the run template shows, as plain values."""
    metrics, config, model = read_run_json(run, "metrics.json"), read_run_json(run, "config.json"), read_run_json(run, "model.json")
    classes = model["classes"]
    rows = read_csv_rows(run / "split.csv")
    data_root = Path(config.get("data", run))
    test = metrics["test"]
    return {
        "title": f"{data_root.name}: {config.get('strategy', model.get('strategy'))} on {model['backbone']}",
        "generated": now_text(),
        "run": str((location or run).resolve()),
        "key_numbers": key_numbers(metrics),
        "dataset": dataset_context(run, rows, classes, data_root, metrics.get("test_is_validation", False)),
        "settings": flatten({k: v for k, v in config.items() if k != "environment"}),
        "environment": flatten(config.get("environment", {})),
        "curves": png_uris(run / "accuracy.png", run / "loss.png"),
        "test": test,
        "confusion_png": png_uri(run / "confusion_matrix.png"),
        "confused_pairs": most_confused_pairs(test["confusion_matrix"], classes),
        "confused_part": confused_part(test["confusion_matrix"], classes) if len(classes) > MANY_CLASSES else None,
        "top_losses": top_losses(run, data_root, test_is_validation=metrics.get("test_is_validation", False)),
        "explanations": stored_explanations(run),
        "summary": stored_summary(run) or summary,
        "timings": timings(metrics),
    }


def confused_part(confusion: list[list[int]], classes: list[str]) -> dict:
    """The most confused classes' sub-matrix as table rows: counts in the cells, errors shaded by their count."""
    part = most_confused_submatrix(confusion, classes, CONFUSED_CLASSES)
    names, top = part["classes"], max(part["max_error"], 1)
    part["rows"] = [
        {"name": name, "cells": [
            {"count": count, "predicted": names[j], "diagonal": i == j,
             "shade": f"{0.15 + 0.6 * count / top:.2f}" if count and i != j else None}
            for j, count in enumerate(row)
        ]}
        for i, (name, row) in enumerate(zip(names, part["matrix"]))
    ]
    return part


def key_numbers(metrics: dict) -> list[tuple[str, str]]:
    """The header's (label, value) pairs."""
    where = "validation accuracy (no test split)" if metrics.get("test_is_validation") else "test accuracy"
    numbers = [(where, percent(metrics.get("test_accuracy")))]
    if metrics.get("top5_accuracy") is not None:
        numbers.append(("top-5 accuracy", percent(metrics["top5_accuracy"])))
    numbers += [
        ("macro F1", f"{metrics['macro_f1']:.3f}" if metrics.get("macro_f1") is not None else "–"),
        ("best validation accuracy", percent(metrics.get("val_accuracy"))),
        ("classes", str(metrics.get("n_classes", "–"))),
        ("images train / val / test", f"{metrics.get('n_train', 0)} / {metrics.get('n_val', 0)} / {metrics.get('n_test', 0)}"),
        ("total time", f"{metrics.get('total_seconds', 0):.1f} s"),
    ]
    return numbers


def dataset_context(run: Path, rows: list[dict], classes: list[str], data_root: Path, test_is_validation: bool) -> dict:
    """Class counts per split, a few sample thumbnails per class, and the skipped files."""
    counts = Counter((row["class"], row["split"]) for row in rows)
    if test_is_validation:  # split.csv leaves the test rows out: the test set is the validation set
        counts.update({(cls, "test"): n for (cls, split), n in list(counts.items()) if split == "validation"})
    skipped = read_csv_rows(run / "skipped.csv")
    shown = classes[:MAX_SAMPLE_CLASSES]
    samples = [
        {"class": cls, "images": [uri for uri in map(thumbnail_uri, paths) if uri]}
        for cls, paths in _sample_paths(rows, shown, data_root).items()
    ]
    return {
        "root": str(data_root),
        "counts": [{"class": cls, **{s: counts[(cls, s)] for s in SPLIT_COLUMNS}} for cls in classes],
        "totals": {s: sum(counts[(cls, s)] for cls in classes) for s in SPLIT_COLUMNS},
        "test_is_validation": test_is_validation,
        "samples": samples,
        "samples_note": f"{len(shown)} of {len(classes)} classes shown" if len(shown) < len(classes) else "",
        "images_missing": bool(rows) and not any(s["images"] for s in samples),
        "skipped": skipped[:MAX_SKIPPED_ROWS],
        "skipped_total": len(skipped),
    }


def _sample_paths(rows: list[dict], classes: list[str], data_root: Path) -> dict[str, list[Path]]:
    """The first few images of each class, training images first."""
    picked: dict[str, list[Path]] = {cls: [] for cls in classes}
    for row in sorted(rows, key=lambda r: r["split"] != "train"):
        chosen = picked.get(row["class"])
        if chosen is not None and len(chosen) < SAMPLES_PER_CLASS:
            chosen.append(data_root / row["path"])
    return picked


def top_losses(run: Path, data_root: Path, test_is_validation: bool = False, limit: int = MAX_TOP_LOSSES) -> dict:
    """Misclassified test images (validation images when there is no test split), highest loss first, from the
    test predictions the run recorded."""
    split = "validation" if test_is_validation else "test"
    recorded = read_csv_rows(run / TEST_PREDICTIONS)
    wrong = sorted((row for row in recorded if row["class"] != row["predicted"]), key=lambda row: float(row["p_true"]))
    items, missing = [], 0
    for row in wrong[:limit]:  # lowest p(true class) = highest loss
        path, p_true = data_root / row["path"], float(row["p_true"])
        missing += not path.is_file()
        items.append({
            "path": row["path"],
            "image": thumbnail_uri(path) if path.is_file() else None,
            "true": row["class"],
            "predicted": row["predicted"],
            "p_predicted": float(row["p_predicted"]),
            "p_true": p_true,
            "loss": -math.log(max(p_true, 1e-12)),
        })
    return {"split": split, "items": items, "n_wrong": len(wrong), "missing": missing, "recorded": bool(recorded)}


def stored_explanations(run: Path) -> dict | None:
    """The heatmaps written after training (runs.explanations), their PNGs as data: URIs; None when absent."""
    index = run / EXPLANATIONS / "index.json"
    if not index.is_file():
        return None
    explanations = json.loads(index.read_text())
    items = [{**item, "image": png_uri(run / EXPLANATIONS / item["file"])} for item in explanations["items"]]
    return {**explanations, "items": [item for item in items if item["image"]]}


def stored_summary(run: Path) -> Summary | None:
    """The model summary recorded at training time (None for run folders from before it was recorded)."""
    path = run / SUMMARY
    return Summary.from_dict(json.loads(path.read_text())) if path.is_file() else None


def timings(metrics: dict) -> list[tuple[str, str]]:
    """Every `*_seconds` metric (strategies may add their own), plus throughput and epochs."""
    rows = [(key.removesuffix("_seconds").replace("_", " "), f"{value:.2f} s")
            for key, value in metrics.items() if key.endswith("_seconds") and isinstance(value, (int, float))]
    if metrics.get("images_per_second"):
        rows.append(("feature extraction speed", f"{metrics['images_per_second']:.1f} images/s"))
    if metrics.get("epochs_run") is not None:
        stopped = ", stopped early" if metrics.get("stopped_early") else ""
        why = metrics.get("stop_reason") or f"best {metrics.get('best_epoch')}{stopped}"  # older runs: no reason
        rows.append(("epochs", f"{metrics['epochs_run']} run: {why}"))
    return rows


# -- compare report -------------------------------------------------------------------------------
def compare_context(folder: Path, location: Path | None = None) -> dict:
    """The strategies of a compare folder side by side; each strategy's own report is written too."""
    where = (location or folder).resolve()
    runs = _compare_runs(folder, read_csv_rows(folder / "compare.csv"))
    for run in runs:
        if not (run / REPORT).is_file():
            write_report(run)
    metrics = {run.name: read_run_json(run, "metrics.json") for run in runs}
    configs = {run.name: read_run_json(run, "config.json") for run in runs}
    first = runs[0] if runs else None
    dataset = None
    if first is not None:
        classes = read_lines(first / "labels.txt")
        dataset = dataset_context(first, read_csv_rows(first / "split.csv"), classes, Path(configs[first.name].get("data", first)),
                                  metrics[first.name].get("test_is_validation", False))
    return {
        "title": f"{where.name}: {len(runs)} strategies compared",
        "generated": now_text(),
        "run": str(where),
        "strategies": [
            _strategy_row(run.name, metrics[run.name], configs[run.name].get("options", {}).get("backbone", ""))
            for run in runs
        ],
        "differences": differing_settings(configs),
        "curves": png_uris(folder / "compare_accuracy.png", folder / "compare_loss.png"),
        "per_class": per_class_side_by_side(metrics),
        "confusions": [{"name": run.name, "image": png_uri(run / "confusion_matrix.png")} for run in runs],
        "dataset": dataset,
    }


def _compare_runs(folder: Path, table: list[dict]) -> list[Path]:
    """Run folders in compare.csv's order (its run_dir or strategy column), then any others found."""
    found = [d for d in sorted(folder.iterdir()) if d.is_dir() and (d / "metrics.json").is_file()]
    listed = [folder / (row.get("run_dir") or row.get("strategy") or "") for row in table]
    return [d for d in listed if d in found] + [d for d in found if d not in listed]


def _strategy_row(name: str, metrics: dict, backbone: str) -> dict:
    keys = ("test_accuracy", "top5_accuracy", "macro_f1", "val_accuracy", "epochs_run",
            "extract_seconds", "train_seconds", "total_seconds")
    return {"name": name, "backbone": backbone, "link": f"{name}/{REPORT}", **{k: metrics.get(k) for k in keys}}


def per_class_side_by_side(metrics: dict[str, dict]) -> dict:
    """F1 of each class (rows) under each strategy (columns)."""
    f1: dict[str, dict[str, float]] = defaultdict(dict)
    for name, values in metrics.items():
        for row in values.get("test", {}).get("per_class", []):
            f1[row["class"]][name] = row["f1"]
    return {"strategies": list(metrics), "rows": [{"class": cls, "f1": by} for cls, by in f1.items()]}


def differing_settings(configs: dict[str, dict]) -> dict:
    """Flattened settings whose values differ between the runs (the environment left out)."""
    flat = {name: dict(flatten({k: v for k, v in c.items() if k != "environment"})) for name, c in configs.items()}
    keys = sorted({key for values in flat.values() for key in values})
    differing = [key for key in keys if len({json.dumps(v.get(key)) for v in flat.values()}) > 1]
    return {"strategies": list(flat), "rows": [{"key": k, "values": [flat[n].get(k, "") for n in flat]} for k in differing]}


# -- helpers --------------------------------------------------------------------------------------
def flatten(value: dict, prefix: str = "") -> list[tuple[str, str]]:
    """Nested settings as ('options.fit.lr', '0.001') pairs, in file order."""
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(item, dict):
            pairs += flatten(item, name)
        else:
            pairs.append((name, "–" if item is None else json.dumps(item) if isinstance(item, list) else str(item)))
    return pairs


__all__ = ["REPORT", "write_report", "run_context", "compare_context"]



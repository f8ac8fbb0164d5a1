"""The run folder's file names and the checks of a folder before it is read: one leaf that every layer may use.

A run folder (written by `runs.writer`) holds the model (`model.json`, `model.safetensors`, `labels.txt`), what
produced it (`config.json`, `split.csv`), what it measured (`metrics.json`, `history.csv`, `test_predictions.csv`,
`summary.json`) and its pictures and report.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from transferlab.core.errors import TransferlabError

MODEL_JSON = "model.json"
WEIGHTS = "model.safetensors"
LABELS = "labels.txt"
CONFIG = "config.json"
METRICS = "metrics.json"
HISTORY = "history.csv"
SPLIT = "split.csv"
TEST_PREDICTIONS = "test_predictions.csv"
SUMMARY = "summary.json"
REPORT = "report.html"
EXPLANATIONS = "explanations"  # heatmap PNGs of test images and their index.json (what report.html shows)
ONNX_MODEL = "model.onnx"
RUN_HINT = "pass the folder written by `transferlab train --out DIR`"


def check_destination(folder: Path | None, overwrite: bool) -> None:
    """Before any work (and before any heavy import, in the CLI's preflight): the folder a run or a comparison
    will be written to is new or empty, or `overwrite` says to replace it. None: a name not chosen yet."""
    if folder is None:
        return
    folder = Path(folder)
    if folder.is_file():
        raise TransferlabError(f"--out {folder} is a file, not a folder", hint="choose another --out")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise TransferlabError(
            f"{folder} already holds a run", hint="choose another --out, or add --overwrite to replace the whole folder"
        )


def read_run_json(run: Path, name: str) -> dict:
    """One of the run folder's JSON files; a folder without it is not a run folder (one clear line)."""
    path = run / name
    if not path.is_file():
        raise TransferlabError(
            f"{run} is not a transferlab run folder (no {name})",
            hint="pass the folder written by `transferlab train --out DIR` or `transferlab compare`",
        )
    return json.loads(path.read_text(encoding="utf-8"))


def check_run_folder(run: Path) -> None:
    """A run folder with a readable model.json, a complete model.safetensors (header and size agree), and class
    lists (model.json's, labels.txt) as long as the network has outputs."""
    if not run.is_dir():
        what = "is a file" if run.exists() else "does not exist"
        raise TransferlabError(f"run folder {run} {what}", hint=RUN_HINT)
    description = run / MODEL_JSON
    if not description.is_file():
        raise TransferlabError(f"{run} is not a transferlab run folder (no model.json)", hint=RUN_HINT)
    try:
        model = json.loads(description.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise TransferlabError(f"{description} is damaged (not valid JSON)",
                               hint="train the run again; model.json is written with the model") from None
    outputs = head_outputs(check_safetensors(run / WEIGHTS))
    labels = run / LABELS
    lists = {"model.json": model.get("classes") if isinstance(model, dict) else None,
             "labels.txt": read_labels(labels) if labels.is_file() else None}
    check_class_count(run, lists, "model.safetensors", outputs)


def read_labels(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]


def head_outputs(header: dict) -> int | None:
    """The network's number of outputs: the length of the head's last bias (every head ends in a Linear layer)."""
    biases = {int(match[1]): entry.get("shape") for key, entry in header.items()
              if (match := re.fullmatch(r"head\.(\d+)\.bias", key))}
    last = biases[max(biases)] if biases else None
    return last[0] if last else None


def check_class_count(folder: Path, lists: dict[str, list | None], network: str, outputs: int | None) -> None:
    """Each class list (file name -> classes, None where absent) names as many classes as the network has
    outputs: a list edited by hand or copied from another run would otherwise name the wrong classes, silently."""
    wrong = [f"{name} lists {len(classes)} classes" for name, classes in lists.items()
             if classes is not None and outputs is not None and len(classes) != outputs]
    if wrong:
        raise TransferlabError(f"{folder}: {' and '.join(wrong)} but {network} has {outputs} outputs",
                               hint="the class list and the network must come from the same run: copy the whole "
                                    "run folder again, or train again")


def check_safetensors(path: Path) -> dict:
    """The file exists and is as long as its own header says: a truncated or overwritten model is refused here,
    instead of as a SafetensorError traceback from the loader. Returns the header (tensor name -> dtype, shape)."""
    if not path.is_file():
        raise TransferlabError(f"{path.parent} has no model.safetensors (the trained weights)",
                               hint="train the run again, or copy the whole run folder")
    size = path.stat().st_size
    damaged = TransferlabError(f"{path} is damaged or truncated ({size:,} bytes)",
                               hint="train the run again, or copy the file again from where it was made")
    try:
        with path.open("rb") as file:
            (header_length,) = struct.unpack("<Q", file.read(8))
            if header_length > size - 8:
                raise damaged
            header = json.loads(file.read(header_length))
        end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError):
        raise damaged from None
    if 8 + header_length + end != size:
        raise damaged
    return header

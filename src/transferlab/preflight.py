"""Argument checks that run before any heavy library is imported.

The CLI calls these first, so that a typo or a missing folder is reported in a fraction of a second instead of
after torch, timm, onnxruntime and scikit-learn have loaded (9-17 s on a busy CPU). Standard library only, plus
`options` (itself torch-free): importing this module must never pull in a heavy library, which
`tests/test_cli_preflight.py` checks in a fresh interpreter.

These checks duplicate none of the work: the API checks the same things again where it does the work (a user
of the Python API gets the same messages), this module only makes the command line fail before the cost.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import re
import socket
import struct
from pathlib import Path

from transferlab.errors import TransferlabError
from transferlab.options import MIN_IMAGE_SIZE, check_data_folder, check_device, check_strategies, check_strategy, check_tta, parse_duration

# The names `backbones.py` registers, written out so that checking a name costs no torch import. A test keeps
# this list equal to the registry (`test_preflight_backbone_names_match_the_registry`).
BACKBONE_NAMES = (
    "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "vgg16", "vgg19", "resnet50", "inception_v3",
    "inception_resnet_v2", "xception", "mobilenet", "mobilenet_v2", "convnext_tiny", "vit_small", "small_cnn",
    "small_cnn_224",
)
COMBINE = "+"  # extractors.SEPARATOR
PREDICTION_RUNTIMES = ("auto", "torch", "onnx")
OUTPUT_FORMATS = ("table", "csv", "json")
GLOBAL_FLAGS = ("--quiet", "-q", "--json", "--debug")  # the callback's options in cli.py
RUN_HINT = "pass the folder written by `transferlab train --out DIR`"


def at_least(option: str, value: int | float | None, low: int | float) -> None:
    """`value` (when given) is >= low; the message names the command-line option."""
    if value is not None and value < low:
        raise TransferlabError(f"{option} must be at least {low}, got {value}")


def check_backbone(name: str | None) -> None:
    """A registered name, or names joined by '+' (each once)."""
    if name is None:
        return
    parts = name.split(COMBINE)
    unknown = [part for part in parts if part not in BACKBONE_NAMES]
    if unknown:
        raise TransferlabError(f"unknown backbone {unknown[0]!r}", hint=f"choose one of: {', '.join(BACKBONE_NAMES)}")
    if len(set(parts)) != len(parts):
        raise TransferlabError(f"backbone {name!r} names a backbone twice", hint="e.g. efficientnet_lite0+efficientnet_lite2")


def check_out(out: Path | None, overwrite: bool) -> None:
    """`--out` is no file, and no folder holding files unless `--overwrite` (as `runs.check_destination`)."""
    if out is None:
        return
    if out.is_file():
        raise TransferlabError(f"--out {out} is a file, not a folder", hint="choose another --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise TransferlabError(
            f"{out} already holds a run", hint="choose another --out, or add --overwrite to replace the whole folder"
        )


def check_existing_file(option: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise TransferlabError(f"{option} {path}: no such file")


def check_run_folder(run: Path) -> None:
    """A run folder with a readable model.json, a complete model.safetensors (header and size agree), and class
    lists (model.json's, labels.txt) as long as the network has outputs."""
    if not run.is_dir():
        what = "is a file" if run.exists() else "does not exist"
        raise TransferlabError(f"run folder {run} {what}", hint=RUN_HINT)
    description = run / "model.json"
    if not description.is_file():
        raise TransferlabError(f"{run} is not a transferlab run folder (no model.json)", hint=RUN_HINT)
    try:
        model = json.loads(description.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise TransferlabError(f"{description} is damaged (not valid JSON)",
                               hint="train the run again; model.json is written with the model") from None
    outputs = head_outputs(check_safetensors(run / "model.safetensors"))
    labels = run / "labels.txt"
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


def prediction_runtime(run: Path, runtime: str) -> str:
    """"onnx" when asked for, when RUN is an .onnx file, or (auto) when RUN has an exported model and torch is
    not installed; else "torch". Looks for torch without importing it."""
    if runtime not in PREDICTION_RUNTIMES:
        raise TransferlabError(f"unknown runtime {runtime!r}", hint="use auto, torch or onnx")
    if run.suffix == ".onnx":
        return "onnx"
    if runtime != "auto":
        return runtime
    if (run / "model.onnx").is_file() and not installed("torch"):
        return "onnx"
    return "torch"


def installed(module: str) -> bool:
    """Whether `module` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # an import hook that refuses it (as a test's torch blocker does)
        return False


def check_model(run: Path, runtime: str) -> str:
    """The model `predict`/`serve` will load exists for the runtime that will load it; returns that runtime."""
    chosen = prediction_runtime(run, runtime)
    if chosen == "torch":
        check_run_folder(run)
        return chosen
    onnx_path = run if run.suffix == ".onnx" else run / "model.onnx"
    if not onnx_path.is_file():
        raise TransferlabError(f"no exported model at {onnx_path}", hint=f"run `transferlab export {run}` first")
    return chosen


def check_train(data: Path, *, backbone: str | None, strategy: str, out: Path | None, overwrite: bool,
                budget: str | None, epochs: int | None, batch_size: int | None, lr: float | None, views: int,
                tta: int, finetune_epochs: int, device: str, weights: Path | None, split_csv: Path | None,
                image_size: int | None = None) -> None:
    check_data_folder(data)
    if strategy != "auto":
        check_strategy(strategy)
    if budget is not None:
        parse_duration(budget)
    check_backbone(backbone)
    check_out(out, overwrite)
    _check_counts(epochs=epochs, views=views, tta=tta, finetune_epochs=finetune_epochs)
    at_least("--batch-size", batch_size, 1)
    at_least("--image-size", image_size, MIN_IMAGE_SIZE)
    if lr is not None and not lr > 0:
        raise TransferlabError(f"--lr must be above 0, got {lr}")
    check_device(device)
    check_existing_file("--weights", weights)
    check_existing_file("--split-csv", split_csv)


def check_compare(data: Path, *, strategies: list[str], backbone: str, scratch_backbone: str | None,
                  out: Path | None, overwrite: bool, epochs: int | None, views: int | None, tta: int,
                  finetune_epochs: int | None, device: str) -> None:
    check_data_folder(data)
    check_strategies(strategies)
    check_backbone(backbone)
    check_backbone(scratch_backbone)
    check_out(out, overwrite)
    _check_counts(epochs=epochs, views=views, tta=tta, finetune_epochs=finetune_epochs)
    check_device(device)


def check_predict(run: Path, *, runtime: str, top_k: int, output_format: str, tta: int) -> str:
    """Returns the runtime that will predict (see `prediction_runtime`)."""
    at_least("--top-k", top_k, 1)
    check_tta(tta)
    if output_format not in OUTPUT_FORMATS:
        raise TransferlabError(f"unknown format {output_format!r}", hint="use table, csv or json")
    chosen = check_model(run, runtime)
    if chosen == "onnx" and tta != 1:
        raise TransferlabError("--tta needs the PyTorch model", hint="use --runtime torch (and have torch installed)")
    return chosen


def check_summary_target(target: str) -> None:
    """A run folder or a backbone name (`summary.summary_of` says the same after importing torch)."""
    if Path(target).is_dir():
        check_run_folder(Path(target))
    elif target not in BACKBONE_NAMES:
        raise TransferlabError(f"{target!r} is neither a run folder nor a backbone",
                               hint=f"pass a folder written by `transferlab train`, or one of: {', '.join(BACKBONE_NAMES)}")


def check_evaluate(run: Path, data: Path, tta: int) -> None:
    check_run_folder(run)
    check_data_folder(data)
    check_tta(tta)


def check_port(port: int, host: str = "127.0.0.1") -> None:
    """A valid port that nothing listens on yet: said before "serving on ..." is printed, not as a uvicorn error."""
    if not 0 < port < 65536:
        raise TransferlabError(f"--port must be between 1 and 65535, got {port}", hint="e.g. --port 8000")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closed server's port is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise TransferlabError(f"port {port} on {host} is already in use",
                                       hint=f"pick another with --port, e.g. --port {port + 1}") from None
            raise TransferlabError(f"cannot listen on {host}:{port} ({exc.strerror})", hint="check --host") from None


def _check_counts(**counts: int | None) -> None:
    for name, value in counts.items():
        at_least("--" + name.replace("_", "-"), value, 1)


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move the global flags to the front, so that `transferlab train DATA --json` works as `--json train DATA`
    does (Click accepts a group's options only before the command name). Arguments after `--` stay as they are."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]

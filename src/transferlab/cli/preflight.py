"""Argument checks that run before any heavy library is imported.

The CLI calls these first, so that a typo or a missing folder is reported in a fraction of a second instead of
after torch, timm, onnxruntime and scikit-learn have loaded (9-17 s on a busy CPU). Standard library only, plus
`transferlab.core` (itself torch-free): importing this module must never pull in a heavy library, which
`tests/test_cli_preflight.py` checks in a fresh interpreter.

These checks duplicate none of the work: the API checks the same things again where it does the work (a user
of the Python API gets the same messages), this module only makes the command line fail before the cost.
"""

from __future__ import annotations

import errno
import importlib.util
import socket
from pathlib import Path

from transferlab.core.config import check_data_folder, check_layer, check_strategies, check_tta
from transferlab.core.errors import TransferlabError
from transferlab.core.options import BY_KEYWORD
from transferlab.core.run_folder import check_destination, check_run_folder

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


def check_existing_file(option: str, path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise TransferlabError(f"{option} {path}: no such file")


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


def check_flags(flags: dict) -> None:
    """Every flag that is an option of the table (core.options), checked as the API will, named as typed."""
    for name, value in flags.items():
        BY_KEYWORD[name].check(value, BY_KEYWORD[name].flag)


def check_train(data: Path, flags: dict) -> None:
    """`flags`: train's flags as flat keywords of the API (`cli.common.train_keywords`)."""
    check_data_folder(data)
    check_flags(flags)
    check_layer(flags["strategy"], flags["layer"])
    check_backbone(flags["backbone"])
    check_destination(flags["out"], flags["overwrite"])
    check_existing_file("--weights", flags["weights"])
    check_existing_file("--split-csv", flags["split_csv"])


def check_compare(data: Path, strategies: list[str], scratch_backbone: str | None, flags: dict) -> None:
    check_data_folder(data)
    check_strategies(strategies)
    check_flags(flags)
    check_backbone(flags["backbone"])
    check_backbone(scratch_backbone)
    check_destination(flags["out"], flags["overwrite"])


def check_predict(run: Path, *, runtime: str, top_k: int, output_format: str, tta: int, explain: bool = False) -> str:
    """Returns the runtime that will predict (see `prediction_runtime`)."""
    at_least("--top-k", top_k, 1)
    check_tta(tta)
    if output_format not in OUTPUT_FORMATS:
        raise TransferlabError(f"unknown format {output_format!r}", hint="use table, csv or json")
    chosen = check_model(run, runtime)
    if chosen == "onnx" and tta != 1:
        raise TransferlabError("--tta needs the PyTorch model", hint="use --runtime torch (and have torch installed)")
    if chosen == "onnx" and explain:
        from transferlab.deploy.onnx_predict import explanations_need_torch  # on this error only: no onnxruntime

        raise explanations_need_torch()
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


def hoist_global_flags(args: list[str]) -> list[str]:
    """Move the global flags to the front, so that `transferlab train DATA --json` works as `--json train DATA`
    does (Click accepts a group's options only before the command name). Arguments after `--` stay as they are."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]

"""What the modules of the `transferlab` command share: the global flags' state, the consoles, JSON output and
the options several commands take (the Typer shell is cli.py; the engine commands are in cli_engine.py)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)

# shared by train and compare
IncludeOption = Annotated[Optional[str], typer.Option(help="Only these classes, comma-separated.")]
ExcludeOption = Annotated[Optional[str], typer.Option(help="Leave out these classes, comma-separated.")]
SplitOption = Annotated[str, typer.Option(help="train,validation,test fractions for a folder of classes.")]
PrecisionOption = Annotated[str, typer.Option(help="Frozen backbone precision (extract, augment): float32 | int8 (ONNX Runtime, calibrated on training images) | auto (int8 only for backbones it costs <= 0.3 points).")]
MaxPerClassOption = Annotated[Optional[int], typer.Option(help="Cap the number of images per class.")]
EndToEndOption = Annotated[Optional[bool], typer.Option(
    "--end-to-end/--cached",
    help="augment, finetune: augment every batch afresh through the network, or train from cached views "
    "(default: end to end on a GPU, cached on a CPU).",
)]
# --engine ray (transferlab.engines.local): Ray is imported only when it is chosen
# Which file predicts, not what runs a trunk (train's --runtime): hence its own name; --runtime still answers here.
ModelFileOption = Annotated[str, typer.Option(
    "--model", "--runtime",
    help="Which model predicts: torch (RUN's model.safetensors) | onnx (the exported RUN/model.onnx, or RUN given as "
    "an .onnx file; torch-free) | auto (torch, or onnx when torch is missing). --runtime is its old name.",
)]
EngineOption = Annotated[str, typer.Option(
    help="local | ray (frozen features computed on a Ray cluster into the same cache; finetune --end-to-end and "
    "scratch trained data-parallel on Ray Train; compare's strategies as parallel Ray tasks).",
)]
RayAddressOption = Annotated[Optional[str], typer.Option(help="Ray cluster: auto | HOST:PORT (default: start a local Ray instance).")]
WorkersOption = Annotated[Optional[int], typer.Option(
    help="--engine ray, finetune --end-to-end or scratch: Ray Train workers (default: one per CPU, or GPU, of the cluster).",
)]
RecipeOption = Annotated[Optional[str], typer.Option(
    help="scratch: default (128 px, batch 32, Adam 1e-3, 9 epochs, inputs standardised per channel) | lesson (the "
    "transfer-learning lesson's baseline: 224 px, batch 128, Adam 1e-3, 10 epochs, no augmentation); --epochs, "
    "--batch-size, --lr, --augment (replacing the recipe's augmentation and standardisation), --backbone override it.",
)]


class State:
    quiet = False
    json = False
    debug = False


state = State()


def comma_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def emit_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def engine_keywords(engine: str, ray_address: str | None, workers: int | None = None) -> dict:
    """The API keywords of the engine flags; none for the default local engine without --workers (so the API's
    own checks speak when --workers comes without --engine ray)."""
    keywords = {"engine": engine, "ray_address": ray_address} if engine != "local" else {}
    return {**keywords, **({"workers": workers} if workers is not None else {})}

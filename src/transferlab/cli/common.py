"""What the modules of the `transferlab` command share: the global flags' state, the consoles, JSON output and
the flags whose default and help come from the table of options (the Typer shell is app.py; the engine commands
are in engine.py)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from transferlab.core.options import BY_KEYWORD

out = Console()
err = Console(stderr=True)


# Which file predicts, not what runs a trunk (train's --runtime): hence its own name; --runtime still answers here.
ModelFileOption = Annotated[str, typer.Option(
    "--model", "--runtime",
    help="Which model predicts: torch (RUN's model.safetensors) | onnx (the exported RUN/model.onnx, or RUN given as "
    "an .onnx file; torch-free) | auto (torch, or onnx when torch is missing). --runtime is its old name.",
)]


def flag(keyword: str, *declarations: str) -> Any:
    """A Typer option whose default and help text are the table's (core.options), found by its flat name (the
    flag without dashes); `declarations` name the flag when it differs ("--out", "--end-to-end/--cached")."""
    option = BY_KEYWORD[keyword]
    value = ",".join(map(str, option.default)) if isinstance(option.default, tuple) else option.default
    return typer.Option(value, *declarations, help=option.help)


class State:
    quiet = False
    json = False
    debug = False


state = State()


def comma_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def emit_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def train_keywords(flags: dict) -> dict:
    """A command's flags (its locals()) that are options of the table, as flat keywords of `transferlab.train`:
    --out under its name, comma lists split, --patience 0 (off) as None."""
    keywords = {name: value for name, value in {**flags, "out": flags.get("out_dir")}.items() if name in BY_KEYWORD}
    keywords.update(include=comma_list(keywords.get("include")), exclude=comma_list(keywords.get("exclude")))
    if "patience" in keywords:
        keywords["patience"] = keywords["patience"] or None
    return keywords

"""The `transferlab` command: a thin Typer shell over the Python API."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from transferlab.cli import preflight
from transferlab.cli.common import (
    ModelFileOption,
    comma_list,
    emit_json,
    err,
    flag,
    out,
    state,
    train_keywords,
)
from transferlab.cli.doctor import doctor
from transferlab.cli.engine import embed, predict_in_bulk
from transferlab.cli.tools import augment_preview, backbones, export, imagenet, report, serve, summary
from transferlab.core.config import COMPARE_STRATEGIES
from transferlab.core.errors import TransferlabError

app = typer.Typer(
    help="Turn a small folder of labelled images into an accurate image classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def print_version() -> None:
    from transferlab import __version__

    out.print(f"transferlab {__version__}")
    raise typer.Exit()


@app.callback()
def global_options(
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summaries.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors and library warnings.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=lambda shown: shown and print_version())] = False,
):
    state.quiet, state.json, state.debug = quiet or json_output, json_output, debug
    if not debug:  # library warnings (Pillow, matplotlib, torch) are noise on a user's terminal
        warnings.filterwarnings("ignore")


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Folder of class subfolders, a pre-split folder, or a folder with train.txt/test.txt.")],
    backbone: Optional[str] = flag("backbone"),
    strategy: str = flag("strategy"),
    recipe: Optional[str] = flag("recipe"),
    budget: Optional[str] = flag("budget"),
    out_dir: Optional[Path] = flag("out", "--out"),
    overwrite: bool = flag("overwrite"),
    include: Optional[str] = flag("include"),
    exclude: Optional[str] = flag("exclude"),
    split: str = flag("split"),
    split_csv: Optional[Path] = flag("split_csv"),
    skip: Optional[Path] = flag("skip"),
    max_per_class: Optional[int] = flag("max_per_class"),
    seed: int = flag("seed"),
    epochs: Optional[int] = flag("epochs"),
    batch_size: Optional[int] = flag("batch_size"),
    lr: Optional[float] = flag("lr"),
    optimizer: str = flag("optimizer"),
    weight_decay: float = flag("weight_decay"),
    class_weight: Optional[str] = flag("class_weight"),
    patience: int = flag("patience"),
    head: str = flag("head"),
    hidden: int = flag("hidden"),
    dropout: float = flag("dropout"),
    layer: Optional[int] = flag("layer"),
    weights: Optional[Path] = flag("weights"),
    device: str = flag("device"),
    runtime: str = flag("runtime"),
    precision: str = flag("precision"),
    image_size: Optional[int] = flag("image_size"),
    augment: Optional[str] = flag("augment"),
    views: int = flag("views"),
    unfreeze: str = flag("unfreeze"),
    finetune_epochs: int = flag("finetune_epochs"),
    finetune_lr: Optional[float] = flag("finetune_lr"),
    finetune_batch_size: Optional[int] = flag("finetune_batch_size"),
    end_to_end: Optional[bool] = flag("end_to_end", "--end-to-end/--cached"),
    batchnorm: str = flag("batchnorm"),
    tta: int = flag("tta"),
    explain: int = flag("explain"),
    engine: str = flag("engine"),
    ray_address: Optional[str] = flag("ray_address"),
    workers: Optional[int] = flag("workers"),
):
    """Train and evaluate a classifier; write a run folder with metrics, model and plots."""
    keywords = train_keywords(locals())
    preflight.check_train(data, keywords)
    from transferlab.api import train as train_api
    from transferlab.core.settings import grouped

    classifier = train_api(data, **grouped(keywords), quiet=state.quiet)
    if state.json:
        emit_json({"run_dir": str(classifier.run_dir), **{k: v for k, v in classifier.metrics.items() if k != "test"}})


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferlab train`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    top_k: Annotated[int, typer.Option(help="Classes to show per image.")] = 3,
    output_format: Annotated[str, typer.Option("--format", help="table | csv | json")] = "table",
    tta: Annotated[int, typer.Option(help="Average over the original and N-1 augmented views.")] = 1,
    runtime: ModelFileOption = "auto",
    engine: str = flag("engine"),
    ray_address: Optional[str] = flag("ray_address"),
    out_file: Annotated[Optional[Path], typer.Option("--out", help="--engine ray: predictions.parquet or .csv, one row per image, resumable.")] = None,
    explain_dir: Annotated[Optional[Path], typer.Option("--explain", help="Write a Grad-CAM heatmap PNG per image here (original | overlay).")] = None,
):
    """Predict the classes of images with a trained run. A missing or unreadable image becomes a failed row; the
    others are still predicted, and the exit code is 1 when any row failed."""
    chosen = preflight.check_predict(run, runtime=runtime, top_k=top_k, output_format=output_format, tta=tta,
                                     explain=explain_dir is not None)
    from transferlab.model.prediction import (  # numpy, PIL: after the checks
        Prediction,
        expand_paths,
        predict_with_progress,
    )
    paths = expand_paths(images)  # missing paths stay in the list: they become failed rows
    if engine != "local" or out_file is not None:
        return predict_in_bulk(engine, run, paths, out_file, top_k=top_k, tta=tta, ray_address=ray_address)
    if chosen == "onnx":
        from transferlab.deploy.onnx_predict import OnnxClassifier

        model, options = OnnxClassifier(run), {}
    else:
        from transferlab.api import load

        model, options = load(run), {"tta": tta}
    quiet = state.quiet or output_format != "table"
    predictions = predict_with_progress(model, paths, top_k=top_k, quiet=quiet, **options)
    if output_format == "table" and not state.json:
        out.print(Prediction.table(predictions))
    else:
        Prediction.write(predictions, sys.stdout, "json" if state.json else output_format)
    if explain_dir is not None:
        from transferlab.model.explain import save_panels

        written = save_panels(model.explain([p for p, prediction in zip(paths, predictions) if not prediction.error]),
                              explain_dir)
        if not state.quiet and output_format == "table" and not state.json:
            out.print(f"wrote {len(written)} heatmaps to {explain_dir}")
    if any(p.error for p in predictions):
        raise typer.Exit(1)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferlab train`.")],
    data: Annotated[Path, typer.Argument(help="A labelled folder (class subfolders) of images the model has not seen.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the results (default RUN/evaluations/<DATA name>).")] = None,
    tta: Annotated[int, typer.Option(help="Average over the original and N-1 augmented views.")] = 1,
    explain: Annotated[int, typer.Option(help="Images whose Grad-CAM heatmaps report.html shows: the top losses, then "
                                              "correct ones of each class (0: none).")] = 12,
):
    """Measure a run on a new labelled folder: metrics, confusion matrix, heatmaps, report.html (replaced on a rerun)."""
    preflight.check_evaluate(run, data, tta)
    from transferlab.runs.evaluation import evaluate as evaluate_run

    evaluation = evaluate_run(run, data, out=out_dir, tta=tta, explain=explain)
    if state.json:
        emit_json(evaluation.to_dict())
    elif not state.quiet:
        out.print(evaluation.table())
        out.print(f"wrote {evaluation.out / 'report.html'}")


app.command()(embed)


for command in (imagenet, backbones, export, serve, report, summary):
    app.command()(command)


@app.command()
def compare(
    data: Annotated[Path, typer.Argument(help="Image folder, as for `transferlab train`.")],
    strategies: Annotated[str, typer.Option(help="Comma-separated strategies, trained in this order.")] = ",".join(COMPARE_STRATEGIES),
    backbone: Optional[str] = flag("backbone"),
    scratch_backbone: Annotated[Optional[str], typer.Option(help="Architecture for scratch (default: the recipe's small convnet).")] = None,
    recipe: Optional[str] = flag("recipe"),
    out_dir: Optional[Path] = flag("out", "--out"),
    overwrite: bool = flag("overwrite"),
    include: Optional[str] = flag("include"),
    exclude: Optional[str] = flag("exclude"),
    split: str = flag("split"),
    skip: Optional[Path] = flag("skip"),
    max_per_class: Optional[int] = flag("max_per_class"),
    seed: int = flag("seed"),
    epochs: Optional[int] = flag("epochs"),
    views: int = flag("views"),
    augment: Optional[str] = flag("augment"),
    unfreeze: str = flag("unfreeze"),
    finetune_epochs: int = flag("finetune_epochs"),
    finetune_lr: Optional[float] = flag("finetune_lr"),
    finetune_batch_size: Optional[int] = flag("finetune_batch_size"),
    end_to_end: Optional[bool] = flag("end_to_end", "--end-to-end/--cached"),
    device: str = flag("device"),
    precision: str = flag("precision"),
    tta: int = flag("tta"),
    engine: str = flag("engine"),
    ray_address: Optional[str] = flag("ray_address"),
):
    """Train several strategies on the same split; write compare.csv, compare.md, plots and every run folder."""
    keywords = train_keywords(locals())
    names = comma_list(strategies) or []
    preflight.check_compare(data, names, scratch_backbone, keywords)
    from transferlab.api import compare as compare_api
    from transferlab.core.settings import grouped

    scratch_recipe = keywords.pop("recipe")
    comparison = compare_api(data, names, scratch_backbone=scratch_backbone, scratch_recipe=scratch_recipe,
                             **grouped(keywords), quiet=state.quiet)
    if state.json:
        emit_json({"out": str(comparison.out), "rows": comparison.rows})


app.command("augment-preview")(augment_preview)
app.command()(doctor)


def main() -> None:
    """Entry point: user errors print one line plus a hint; --debug shows the traceback."""
    try:
        app(args=preflight.hoist_global_flags(sys.argv[1:]))
    except TransferlabError as exc:
        if state.debug:
            raise
        # escaped: rich would take "[ray]" in "pip install 'transferlab[ray]'" (or in a path) for markup and drop it
        err.print(f"[bold red]error:[/] {escape(exc.message)}")
        if exc.hint:
            err.print(f"[dim]hint:[/] {escape(exc.hint)}")
        err.print("[dim](run with --debug for the traceback)[/]")
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)

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
    EndToEndOption,
    EngineOption,
    ExcludeOption,
    IncludeOption,
    MaxPerClassOption,
    ModelFileOption,
    PrecisionOption,
    RayAddressOption,
    RecipeOption,
    SplitOption,
    WorkersOption,
    comma_list,
    emit_json,
    engine_keywords,
    err,
    out,
    state,
)
from transferlab.cli.engine import embed, predict_in_bulk
from transferlab.cli.tools import augment_preview, backbones, export, imagenet, report, serve, summary
from transferlab.core.config import (
    COMPARE_STRATEGIES,
    DEFAULT_BACKBONE,
    parse_duration,
    split_fractions,
)
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


def data_selection(include: str | None, exclude: str | None, split: str, max_per_class: int | None) -> dict:
    """The data flags `train` and `compare` share, parsed into API keywords."""
    return {
        "include": comma_list(include),
        "exclude": comma_list(exclude),
        "split": split_fractions(split),
        "max_per_class": max_per_class,
    }


# the flags `train` and `compare` share that reach the API under their own name
SHARED_KEYWORDS = ("overwrite", "seed", "unfreeze", "device", "precision", "tta")


def shared_keywords(flags: dict) -> dict:
    """The API keywords `train` and `compare` build alike from their flags (the command's locals()): the run
    folder, the data selection, the same-named knobs, the engine and quietness."""
    return {
        "out": flags["out_dir"],
        **{name: flags[name] for name in SHARED_KEYWORDS},
        **data_selection(flags["include"], flags["exclude"], flags["split"], flags["max_per_class"]),
        **engine_keywords(flags["engine"], flags["ray_address"], flags.get("workers")),
        "quiet": state.quiet,
    }


def parse_layer(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise TransferlabError(f"--layer must be a stage index, got {value!r}", hint="e.g. --layer -2 (the stage before the last)") from None


@app.command()
def train(
    data: Annotated[Path, typer.Argument(help="Folder of class subfolders, a pre-split folder, or a folder with train.txt/test.txt.")],
    backbone: Annotated[Optional[str], typer.Option(help="Backbone (see `transferlab backbones`); default efficientnet_lite0, small_cnn for scratch.")] = None,
    strategy: Annotated[str, typer.Option(help="extract | augment | finetune | scratch | auto (the best within --budget)")] = "extract",
    budget: Annotated[Optional[str], typer.Option(help="Time budget of --strategy auto: 90s, 10m, 1h (default: fitted to the data size).")] = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Run folder (default runs/<data>-<strategy>).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder at --out as a whole.")] = False,
    include: IncludeOption = None,
    exclude: ExcludeOption = None,
    split: SplitOption = "0.7,0.15,0.15",
    split_csv: Annotated[Optional[Path], typer.Option(help="Reproduce the split.csv of an earlier run.")] = None,
    max_per_class: MaxPerClassOption = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, the head and the shuffling.")] = 0,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs, early stopping may end sooner (default 50, the recipe's for scratch).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Training batch size (default 256 for heads on cached features, the recipe's for scratch).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate (default 1e-3 for heads on cached features, the recipe's for scratch).")] = None,
    optimizer: Annotated[str, typer.Option(help="rmsprop | adam | adamw | sgd")] = "adam",
    head: Annotated[str, typer.Option(help="mlp (Dense 256 + dropout 0.5) | linear")] = "mlp",
    class_weight: Annotated[Optional[str], typer.Option(help="'balanced' to weight classes by inverse frequency.")] = None,
    patience: Annotated[int, typer.Option(help="Early-stopping patience on validation loss (0: off).")] = 8,
    layer: Annotated[Optional[str], typer.Option(help="Take features from this stage index instead of the last.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Backbone weights file (safetensors) instead of a download.")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    runtime: Annotated[str, typer.Option(help="What runs the frozen backbone: auto (ONNX Runtime on a CPU, PyTorch on a GPU) | onnx | torch.")] = "auto",
    precision: PrecisionOption = "auto",
    views: Annotated[int, typer.Option(help="Augmented views per training image (augment, finetune).")] = 3,
    augment: Annotated[Optional[str], typer.Option(help="Training augmentation: notebook | light | light-noflip | none (default: light for augment and finetune, the recipe's for scratch).")] = None,
    recipe: RecipeOption = None,
    unfreeze: Annotated[str, typer.Option(help="Top blocks to fine-tune: N or 'all'.")] = "1",
    finetune_epochs: Annotated[int, typer.Option(help="Epochs of the fine-tuning phase.")] = 10,
    finetune_lr: Annotated[Optional[float], typer.Option(help="Learning rate of the fine-tuning phase (default: RMSprop 1e-5 on cached activations, AdamW 1e-3 one-cycle end to end).")] = None,
    end_to_end: EndToEndOption = None,
    image_size: Annotated[Optional[int], typer.Option(help="Network input size in pixels (default: the backbone's own); e.g. 96 for small images.")] = None,
    batchnorm: Annotated[str, typer.Option(help="Whole-network fine-tuning: BatchNorm statistics frozen (ImageNet's) or train (re-estimated).")] = "frozen",
    tta: Annotated[int, typer.Option(help="Test-time augmentation views for the evaluation (1: off); mirrored only if the training augmentation flips.")] = 1,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    workers: WorkersOption = None,
):
    """Train and evaluate a classifier; write a run folder with metrics, model and plots."""
    preflight.check_train(data, backbone=backbone, strategy=strategy, out=out_dir, overwrite=overwrite, budget=budget,
                          epochs=epochs, batch_size=batch_size, lr=lr, views=views, tta=tta,
                          finetune_epochs=finetune_epochs, device=device, weights=weights, split_csv=split_csv,
                          image_size=image_size)
    keywords = shared_keywords(locals())
    from transferlab.api import train as train_api

    classifier = train_api(
        data,
        backbone=backbone,
        strategy=strategy,
        budget=parse_duration(budget) if budget else None,
        split_csv=split_csv,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        head=head,
        class_weight=class_weight,
        patience=patience or None,
        layer=parse_layer(layer),
        weights=weights,
        runtime=runtime,
        views=views,
        augment=augment,
        recipe=recipe,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        end_to_end=end_to_end,
        image_size=image_size,
        batchnorm=batchnorm,
        **keywords,
    )
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
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
    out_file: Annotated[Optional[Path], typer.Option("--out", help="--engine ray: predictions.parquet or .csv, one row per image, resumable.")] = None,
):
    """Predict the classes of images with a trained run. A missing or unreadable image becomes a failed row; the
    others are still predicted, and the exit code is 1 when any row failed."""
    chosen = preflight.check_predict(run, runtime=runtime, top_k=top_k, output_format=output_format, tta=tta)
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
    if any(p.error for p in predictions):
        raise typer.Exit(1)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferlab train`.")],
    data: Annotated[Path, typer.Argument(help="A labelled folder (class subfolders) of images the model has not seen.")],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the results (default RUN/evaluations/<DATA name>).")] = None,
    tta: Annotated[int, typer.Option(help="Average over the original and N-1 augmented views.")] = 1,
):
    """Measure a run on a new labelled folder: metrics, confusion matrix, report.html (replaced on a rerun)."""
    preflight.check_evaluate(run, data, tta)
    from transferlab.runs.evaluation import evaluate as evaluate_run

    evaluation = evaluate_run(run, data, out=out_dir, tta=tta)
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
    backbone: Annotated[str, typer.Option(help="Pretrained backbone of the transfer strategies.")] = DEFAULT_BACKBONE,
    scratch_backbone: Annotated[Optional[str], typer.Option(help="Architecture for scratch (default: the recipe's small convnet).")] = None,
    recipe: RecipeOption = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Folder for the runs and tables (default runs/<data>-compare).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder at --out as a whole.")] = False,
    include: IncludeOption = None,
    exclude: ExcludeOption = None,
    split: SplitOption = "0.7,0.15,0.15",
    max_per_class: MaxPerClassOption = None,
    seed: Annotated[int, typer.Option(help="Seed for the split and every run.")] = 0,
    epochs: Annotated[Optional[int], typer.Option(help="Maximum epochs of each run (default: train's).")] = None,
    views: Annotated[Optional[int], typer.Option(help="Augmented views per training image (augment, finetune).")] = None,
    augment: Annotated[Optional[str], typer.Option(help="Training augmentation: notebook | light | light-noflip | none (default per strategy).")] = None,
    unfreeze: Annotated[str, typer.Option(help="Top blocks to fine-tune: N or 'all'.")] = "1",
    finetune_epochs: Annotated[Optional[int], typer.Option(help="Epochs of the fine-tuning phase.")] = None,
    finetune_lr: Annotated[Optional[float], typer.Option(help="Learning rate of the fine-tuning phase.")] = None,
    end_to_end: EndToEndOption = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    precision: PrecisionOption = "auto",
    tta: Annotated[int, typer.Option(help="Test-time augmentation views for the evaluations (1: off); mirrored only if the training augmentation flips.")] = 1,
    engine: EngineOption = "local",
    ray_address: RayAddressOption = None,
):
    """Train several strategies on the same split; write compare.csv, compare.md, plots and every run folder."""
    preflight.check_compare(data, strategies=comma_list(strategies) or [], backbone=backbone,
                            scratch_backbone=scratch_backbone, out=out_dir, overwrite=overwrite, epochs=epochs,
                            views=views, tta=tta, finetune_epochs=finetune_epochs, device=device)
    keywords = shared_keywords(locals())
    from transferlab.api import compare as compare_api

    optional = {
        "epochs": epochs, "views": views, "augment": augment, "finetune_epochs": finetune_epochs, "finetune_lr": finetune_lr,
        "end_to_end": end_to_end,
    }
    comparison = compare_api(
        data,
        comma_list(strategies) or [],
        backbone=backbone,
        scratch_backbone=scratch_backbone,
        scratch_recipe=recipe,
        **keywords,
        **{key: value for key, value in optional.items() if value is not None},
    )
    if state.json:
        emit_json({"out": str(comparison.out), "rows": comparison.rows})


app.command("augment-preview")(augment_preview)


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

"""The `transferlab` command: a thin Typer shell over the Python API."""

from __future__ import annotations

import csv
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from transferlab.errors import TransferlabError
from transferlab.layouts import image_files
from transferlab.prediction import Prediction
from transferlab.options import COMPARE_STRATEGIES, DEFAULT_BACKBONE, parse_duration, split_fractions

app = typer.Typer(
    help="Turn a small folder of labelled images into an accurate image classifier.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

# shared by train and compare
IncludeOption = Annotated[Optional[str], typer.Option(help="Only these classes, comma-separated.")]
ExcludeOption = Annotated[Optional[str], typer.Option(help="Leave out these classes, comma-separated.")]
SplitOption = Annotated[str, typer.Option(help="train,validation,test fractions for a folder of classes.")]
MaxPerClassOption = Annotated[Optional[int], typer.Option(help="Cap the number of images per class.")]
PrecisionOption = Annotated[str, typer.Option(help="Frozen backbone precision (extract, augment): float32 | int8 (ONNX Runtime, calibrated on training images) | auto (int8 only for backbones it costs <= 0.3 points).")]
EndToEndOption = Annotated[Optional[bool], typer.Option(
    "--end-to-end/--cached",
    help="augment, finetune: augment every batch afresh through the network, or train from cached views "
    "(default: end to end on a GPU, cached on a CPU).",
)]
RecipeOption = Annotated[Optional[str], typer.Option(
    help="scratch: default | lesson (the transfer-learning lesson's baseline: 224 px, batch 128, Adam 1e-3, 10 epochs, "
    "no augmentation); --epochs, --batch-size, --lr, --augment, --backbone override its settings.",
)]


class State:
    quiet = False
    json = False
    debug = False


state = State()


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


def comma_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def data_selection(include: str | None, exclude: str | None, split: str, max_per_class: int | None) -> dict:
    """The data flags `train` and `compare` share, parsed into API keywords."""
    return {
        "include": comma_list(include),
        "exclude": comma_list(exclude),
        "split": split_fractions(split),
        "max_per_class": max_per_class,
    }


def parse_layer(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise TransferlabError(f"--layer must be a stage index, got {value!r}", hint="e.g. --layer -2 (the stage before the last)") from None


def emit_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


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
    augment: Annotated[Optional[str], typer.Option(help="Training augmentation: notebook | light | none (default: light for augment and finetune, the recipe's for scratch).")] = None,
    recipe: RecipeOption = None,
    unfreeze: Annotated[str, typer.Option(help="Top blocks to fine-tune: N or 'all'.")] = "1",
    finetune_epochs: Annotated[int, typer.Option(help="Epochs of the fine-tuning phase.")] = 10,
    finetune_lr: Annotated[float, typer.Option(help="Learning rate of the fine-tuning phase (RMSprop).")] = 1e-5,
    end_to_end: EndToEndOption = None,
    tta: Annotated[int, typer.Option(help="Test-time augmentation views for the evaluation (1: off).")] = 1,
):
    """Train and evaluate a classifier; write a run folder with metrics, model and plots."""
    from transferlab.api import train as train_api

    classifier = train_api(
        data,
        backbone=backbone,
        strategy=strategy,
        budget=parse_duration(budget) if budget else None,
        out=out_dir,
        overwrite=overwrite,
        split_csv=split_csv,
        seed=seed,
        **data_selection(include, exclude, split, max_per_class),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        head=head,
        class_weight=class_weight,
        patience=patience or None,
        layer=parse_layer(layer),
        weights=weights,
        device=device,
        runtime=runtime,
        precision=precision,
        views=views,
        augment=augment,
        recipe=recipe,
        unfreeze=unfreeze,
        finetune_epochs=finetune_epochs,
        finetune_lr=finetune_lr,
        end_to_end=end_to_end,
        tta=tta,
        quiet=state.quiet,
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
    runtime: Annotated[str, typer.Option(help="torch (the run's PyTorch model) | onnx (the exported RUN/model.onnx, or RUN given as an .onnx file, torch-free) | auto (torch, or onnx when torch is missing).")] = "auto",
):
    """Predict the classes of images with a trained run."""
    if top_k < 1:
        raise TransferlabError(f"--top-k must be at least 1, got {top_k}")
    if output_format not in ("table", "csv", "json"):
        raise TransferlabError(f"unknown format {output_format!r}", hint="use table, csv or json")
    if prediction_runtime(run, runtime) == "onnx":
        if tta != 1:
            raise TransferlabError("--tta needs the PyTorch model", hint="use --runtime torch (and have torch installed)")
        from transferlab.onnx_predict import OnnxClassifier

        predictions = OnnxClassifier(run).predict(image_files(images), top_k=top_k)
    else:
        from transferlab.api import load

        predictions = load(run).predict(image_files(images), top_k=top_k, tta=tta)
    if output_format == "json" or state.json:
        emit_json([{"image": p.source, "top": [{"label": l, "probability": pr} for l, pr in p.top], "error": p.error} for p in predictions])
    elif output_format == "csv":
        writer = csv.writer(sys.stdout)
        writer.writerow(["image", "rank", "label", "probability", "error"])
        for p in predictions:
            for rank, (label, prob) in enumerate(p.top, 1):
                writer.writerow([p.source, rank, label, f"{prob:.6f}", ""])
            if p.error:
                writer.writerow([p.source, "", "", "", p.error])
    else:
        out.print(Prediction.table(predictions))


@app.command()
def imagenet(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    backbone: Annotated[str, typer.Option(help="Pretrained backbone with an ImageNet head.")] = DEFAULT_BACKBONE,
    top_k: Annotated[int, typer.Option(help="Classes to show per image.")] = 5,
    weights: Annotated[Optional[Path], typer.Option(help="Backbone weights file.")] = None,
):
    """Top-k ImageNet-1k classes with human-readable labels (like Keras' decode_predictions)."""
    from transferlab.imagenet import predict_imagenet
    from transferlab.decoding import ImageDecodeError, open_image

    files = image_files(images)
    decoded, failures = [], []
    for f in files:
        try:
            decoded.append((f, open_image(f)))
        except ImageDecodeError as exc:
            failures.append((f, exc.message))
    results = predict_imagenet([im for _, im in decoded], backbone=backbone, top_k=top_k, weights=weights) if decoded else []
    if state.json:
        emit_json([{"image": str(f), "top": [{"label": l, "probability": p} for l, p in top]} for (f, _), top in zip(decoded, results)])
        return
    for (f, _), top in zip(decoded, results):
        table = Table("rank", "ImageNet class", "probability", title=str(f), title_justify="left")
        for rank, (label, prob) in enumerate(top, 1):
            table.add_row(str(rank), label, f"{prob:.1%}")
        out.print(table)
    for f, reason in failures:
        err.print(f"[yellow]skipped {f}: {reason}[/]")


@app.command()
def backbones():
    """List the registered backbones and whether their weights are here."""
    from transferlab.backbones import backbone_status, list_specs

    rows = [(s, backbone_status(s.name)) for s in list_specs()]
    if state.json:
        emit_json([{"name": s.name, "timm": s.timm_name, "input_size": s.input_size, "status": st, "description": s.description} for s, st in rows])
        return
    table = Table("name", "timm architecture", "input", "weights", "description")
    for column in table.columns[:4]:
        column.no_wrap = True  # names are never cut; the description wraps instead
    colours = {"embedded": "green", "cached": "cyan", "needs download": "yellow"}
    for spec, status in rows:
        table.add_row(spec.name, spec.timm_name, str(spec.input_size), f"[{colours.get(status, 'white')}]{status}[/]", spec.description)
    out.print(table)


def prediction_runtime(run: Path, runtime: str) -> str:
    """"onnx" when asked for, when RUN is an .onnx file, or (auto) when RUN has an exported model and torch cannot
    be imported; else "torch"."""
    if runtime not in ("auto", "torch", "onnx"):
        raise TransferlabError(f"unknown runtime {runtime!r}", hint="use auto, torch or onnx")
    if runtime != "auto" or run.suffix == ".onnx" or not (run / "model.onnx").is_file():
        return "onnx" if run.suffix == ".onnx" else runtime if runtime != "auto" else "torch"
    try:
        import torch  # noqa: F401  (the torch path imports it next anyway)
    except ImportError:
        return "onnx"
    return "torch"


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferlab train`.")],
    export_format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    quantize: Annotated[Optional[str], typer.Option(help="Also write an int8 model (model.int8.onnx) and compare it.")] = None,
):
    """Export a run to ONNX (RUN/model.onnx + model.onnx.json), optionally quantized to int8."""
    if export_format != "onnx":
        raise TransferlabError(f"unknown export format {export_format!r}", hint="use --format onnx")
    from transferlab.export import export_run, report_table

    report = export_run(run, quantize=quantize)
    if state.json:
        emit_json(report)
    elif not state.quiet:
        out.print(report_table(report))
        out.print(f"wrote {run / 'model.onnx'} and {run / 'export.json'}")


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferlab train`.")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 exposes the service to your network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload in MB.")] = 20.0,
    max_upload_megapixels: Annotated[float, typer.Option(help="Largest accepted upload in decoded megapixels.")] = 40.0,
    runtime: Annotated[str, typer.Option(help="torch (the run's PyTorch model) | onnx (the exported RUN/model.onnx) | auto.")] = "auto",
):
    """Serve a run: a web page to try images, a JSON API (/api/predict) and the run's report."""
    from transferlab.serve import serve as serve_run

    err.print(f"serving {run} on http://{host}:{port}/ (Ctrl-C to stop)")
    serve_run(run, host=host, port=port, max_upload_mb=max_upload_mb, runtime=prediction_runtime(run, runtime),
              max_upload_megapixels=max_upload_megapixels)


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="Run folder, or a folder written by `transferlab compare`.")],
):
    """Write RUN/report.html: one self-contained page with data, settings, curves, metrics, errors and model."""
    from transferlab.report import write_report

    path = write_report(run)
    if state.json:
        emit_json({"report": str(path)})
    elif not state.quiet:
        out.print(f"wrote {path}")


@app.command()
def summary(
    target: Annotated[str, typer.Argument(help="Backbone name (see `transferlab backbones`) or run folder.")],
    input_size: Annotated[Optional[int], typer.Option(help="Input size in pixels (default: the backbone's own).")] = None,
    depth: Annotated[int, typer.Option(help="Levels of nested layers shown below the top-level ones.")] = 1,
):
    """Keras-style model summary: layers, output shapes, parameters, trainable or frozen."""
    from transferlab.summary import summary_of

    result = summary_of(target, input_size=input_size, depth=depth)
    if state.json:
        emit_json(result.to_dict())
    else:
        out.print(result.table())


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
    augment: Annotated[Optional[str], typer.Option(help="Training augmentation: notebook | light | none (default per strategy).")] = None,
    unfreeze: Annotated[str, typer.Option(help="Top blocks to fine-tune: N or 'all'.")] = "1",
    finetune_epochs: Annotated[Optional[int], typer.Option(help="Epochs of the fine-tuning phase.")] = None,
    finetune_lr: Annotated[Optional[float], typer.Option(help="Learning rate of the fine-tuning phase.")] = None,
    end_to_end: EndToEndOption = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    precision: PrecisionOption = "auto",
    tta: Annotated[int, typer.Option(help="Test-time augmentation views for the evaluations (1: off).")] = 1,
):
    """Train several strategies on the same split; write compare.csv, compare.md, plots and every run folder."""
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
        out=out_dir,
        overwrite=overwrite,
        seed=seed,
        **data_selection(include, exclude, split, max_per_class),
        unfreeze=unfreeze,
        device=device,
        precision=precision,
        tta=tta,
        quiet=state.quiet,
        **{key: value for key, value in optional.items() if value is not None},
    )
    if state.json:
        emit_json({"out": str(comparison.out), "rows": comparison.rows})


@app.command("augment-preview")
def augment_preview(
    source: Annotated[Path, typer.Argument(help="An image, or a folder (its first image is used).")],
    n: Annotated[int, typer.Option("--n", help="Number of augmented variants.")] = 8,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the grid (and the variants).")] = Path("augment-preview"),
    backbone: Annotated[str, typer.Option(help="Resize and crop as this backbone sees images, before augmenting.")] = DEFAULT_BACKBONE,
    seed: Annotated[int, typer.Option(help="Seed of the first variant.")] = 0,
    save_prefix: Annotated[Optional[str], typer.Option(help="Also write the variants as PREFIX_<i>_<seed>.<format>.")] = None,
    save_format: Annotated[str, typer.Option(help="Format of the saved variants: jpeg | png.")] = "jpeg",
):
    """Preview the training augmentation (the notebooks' settings): a grid of the original and N variants."""
    from PIL import Image

    from transferlab.augment import AugmentConfig
    from transferlab.previews import preview_grid, save_augmented
    from transferlab.backbones import get_spec, preprocess
    from transferlab.decoding import open_image

    path = image_files([source])[0]
    image = Image.fromarray(preprocess(open_image(path), get_spec(backbone)))
    config = AugmentConfig()
    grid = out_dir / f"{path.stem}-augmented.png"
    preview_grid(image, config, n=n, seed=seed, path=grid)
    saved = save_augmented(image, config, n, out_dir, prefix=save_prefix, format=save_format, seed=seed) if save_prefix else []
    if state.json:
        emit_json({"grid": str(grid), "saved": [str(p) for p in saved]})
    elif not state.quiet:
        out.print(f"wrote {grid}" + (f" and {len(saved)} augmented images in {out_dir}" if saved else ""))


def main() -> None:
    """Entry point: user errors print one line plus a hint; --debug shows the traceback."""
    try:
        app()
    except TransferlabError as exc:
        if state.debug:
            raise
        err.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            err.print(f"[dim]hint:[/] {exc.hint}")
        err.print("[dim](run with --debug for the traceback)[/]")
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)

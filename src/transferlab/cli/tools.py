"""The model tools of the `transferlab` shell (registered on its app by cli/app.py): ImageNet predictions, the
backbone list, export, serve, report, summary and the augmentation preview."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from transferlab.cli import preflight
from transferlab.cli.common import ModelFileOption, emit_json, err, out, state
from transferlab.core.config import DEFAULT_BACKBONE
from transferlab.core.errors import TransferlabError


def imagenet(
    images: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    backbone: Annotated[str, typer.Option(help="Pretrained backbone with an ImageNet head.")] = DEFAULT_BACKBONE,
    top_k: Annotated[int, typer.Option(help="Classes to show per image.")] = 5,
    weights: Annotated[Optional[Path], typer.Option(help="Backbone weights file.")] = None,
):
    """Top-k ImageNet-1k classes with human-readable labels (like Keras' decode_predictions)."""
    preflight.at_least("--top-k", top_k, 1)
    preflight.check_backbone(backbone)
    from transferlab.backbones.imagenet import predict_imagenet
    from transferlab.data.decoding import ImageDecodeError, open_image
    from transferlab.data.layouts import image_files
    from transferlab.model.prediction import short_source

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
        table = Table("rank", "ImageNet class", "probability", title=short_source(str(f)), title_justify="left")
        for rank, (label, prob) in enumerate(top, 1):
            table.add_row(str(rank), label, f"{prob:.1%}")
        out.print(table, soft_wrap=True)
    for f, reason in failures:
        err.print(f"[yellow]skipped {f}: {reason}[/]")


def backbones():
    """List the registered backbones and whether their weights are here."""
    from transferlab.backbones.registry import backbone_status, list_specs

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


def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferlab train`.")],
    export_format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    quantize: Annotated[Optional[str], typer.Option(help="Also write an int8 model (model.int8.onnx) and compare it.")] = None,
):
    """Export a run to ONNX (RUN/model.onnx + model.onnx.json), optionally quantized to int8."""
    preflight.check_run_folder(run)
    if export_format != "onnx":
        raise TransferlabError(f"unknown export format {export_format!r}", hint="use --format onnx")
    from transferlab.deploy.export import export_run, report_table

    report = export_run(run, quantize=quantize)
    if state.json:
        emit_json(report)
    elif not state.quiet:
        out.print(report_table(report))
        out.print(f"wrote {run / 'model.onnx'} and {run / 'export.json'}")


def serve(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferlab train`.")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 exposes the service to your network).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload in MB.")] = 20.0,
    max_upload_megapixels: Annotated[float, typer.Option(help="Largest accepted upload in decoded megapixels.")] = 40.0,
    runtime: ModelFileOption = "auto",
):
    """Serve a run: a web page to try images, a JSON API (/api/predict) and the run's report."""
    preflight.check_port(port, host)
    chosen = preflight.check_model(run, runtime)
    from transferlab.deploy.serve import serve as serve_run

    err.print(f"serving {run} on http://{host}:{port}/ (Ctrl-C to stop)")
    serve_run(run, host=host, port=port, max_upload_mb=max_upload_mb, runtime=chosen,
              max_upload_megapixels=max_upload_megapixels)


def report(
    run: Annotated[Path, typer.Argument(help="Run folder, or a folder written by `transferlab compare`.")],
):
    """Write RUN/report.html: one self-contained page with data, settings, curves, metrics, errors and model."""
    from transferlab.runs.writer import write_run_report

    path = write_run_report(run)
    if state.json:
        emit_json({"report": str(path)})
    elif not state.quiet:
        out.print(f"wrote {path}")


def summary(
    target: Annotated[str, typer.Argument(help="Backbone name (see `transferlab backbones`) or run folder.")],
    input_size: Annotated[Optional[int], typer.Option(help="Input size in pixels (default: the backbone's own).")] = None,
    depth: Annotated[int, typer.Option(help="Levels of nested layers shown below the top-level ones.")] = 1,
):
    """Keras-style model summary: layers, output shapes, parameters, trainable or frozen."""
    preflight.check_summary_target(target)
    from transferlab.model.summary import summary_of

    result = summary_of(target, input_size=input_size, depth=depth)
    if state.json:
        emit_json(result.to_dict())
    else:
        out.print(result.table())


def augment_preview(
    source: Annotated[Path, typer.Argument(help="An image, or a folder of images (its first image is used).")],
    n: Annotated[int, typer.Option("--n", help="Number of augmented variants.")] = 8,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the grid (and the variants).")] = Path("augment-preview"),
    augment: Annotated[str, typer.Option(help="The training preset to preview: light (what augment and finetune use by default) | notebook (the Keras ImageDataGenerator settings) | none.")] = "light",
    backbone: Annotated[str, typer.Option(help="Resize and crop as this backbone sees images, before augmenting.")] = DEFAULT_BACKBONE,
    seed: Annotated[int, typer.Option(help="Seed of the first variant.")] = 0,
    save_prefix: Annotated[Optional[str], typer.Option(help="Also write the variants as PREFIX_<i>_<seed>.<format>.")] = None,
    save_format: Annotated[str, typer.Option(help="Format of the saved variants: jpeg | png.")] = "jpeg",
):
    """Preview the augmentation training uses (--augment, as `train --augment`): a grid of the original and N variants."""
    from PIL import Image

    from transferlab.backbones.registry import get_spec, preprocess
    from transferlab.data.augment import AugmentConfig
    from transferlab.data.previews import preview_grid, preview_source, save_augmented

    config = AugmentConfig.preset(augment)  # before any image is read: an unknown preset is a clear error
    path, decoded = preview_source(source)
    image = Image.fromarray(preprocess(decoded, get_spec(backbone)))
    grid = out_dir / f"{path.stem}-augmented.png"
    preview_grid(image, config, n=n, seed=seed, path=grid)
    saved = save_augmented(image, config, n, out_dir, prefix=save_prefix, format=save_format, seed=seed) if save_prefix else []
    if state.json:
        emit_json({"grid": str(grid), "augment": augment, "saved": [str(p) for p in saved]})
    elif not state.quiet:
        out.print(f"wrote {grid} ({augment} augmentation)" + (f" and {len(saved)} augmented images in {out_dir}" if saved else ""))

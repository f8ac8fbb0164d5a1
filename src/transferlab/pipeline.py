"""The training pipeline behind `transferlab.train`: options -> data -> strategy -> test predictions (computed
once) -> metrics -> run folder -> report."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console

from transferlab.augment import AugmentConfig
from transferlab.classifier import Classifier
from transferlab.data import load_dataset
from transferlab.errors import TransferlabError
from transferlab.extractors import backbone_names
from transferlab.metrics import evaluate_probabilities
from transferlab.options import (
    DEFAULT_SPLIT,
    INT8_STRATEGIES,
    FitConfig,
    TrainOptions,
    check_precision,
    check_featurewise,
    check_split_csv_alone,
    check_strategy,
    check_tta,
    check_verbose,
    default_backbone,
    default_fit,
    split_fractions,
)
from transferlab.report import write_report
from transferlab.runs import TestPredictions, check_destination, staged, unique_run_dir, write_run
from transferlab.strategies import StrategyResult, run_strategy
from transferlab.strategies.base import runs_end_to_end

COMBINABLE = ("extract", "augment")  # strategies whose every feature comes from a backbone's own cache


def train(
    data: str | Path,
    *,
    backbone: str | None = None,
    strategy: str = "extract",
    out: str | Path | None = None,
    overwrite: bool = False,
    split: tuple[float, float, float] | str = DEFAULT_SPLIT,
    seed: int = 0,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    max_per_class: int | None = None,
    split_csv: str | Path | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    head: str = "mlp",
    hidden: int = 256,
    dropout: float = 0.5,
    class_weight: str | None = None,
    patience: int | None = 8,
    layer: int | None = None,
    weights: str | Path | None = None,
    device: str = "auto",
    runtime: str = "auto",
    precision: str = "auto",
    extract_batch_size: int = 32,
    cache_dir: str | Path | None = None,
    views: int = 3,
    unfreeze: str | int = 1,
    finetune_lr: float = 1e-5,
    finetune_epochs: int = 10,
    augment: AugmentConfig | str | None = None,
    end_to_end: bool | None = None,
    recipe: str | None = None,
    tta: int = 1,
    quiet: bool = False,
    verbose: int = 1,
    console: Console | None = None,
) -> Classifier:
    """Train a classifier on a folder of images, evaluate it on the test split, write a run folder.

    Returns the trained `Classifier`, with `.metrics`, `.history` and `.run_dir` filled in. The run folder (`out`,
    default runs/<data>-<strategy>) must be new unless `overwrite=True`, which replaces it as a whole; it appears
    only when complete.
    `backbone=None` means efficientnet_lite0, or the small baseline convnet for strategy="scratch";
    `batch_size=None` / `lr=None` / `epochs=None` mean the strategy's defaults (256 / 1e-3 / 50 for heads on
    cached features; for scratch, those of `recipe`: "default", or "lesson" for the transfer-learning lesson's
    baseline, see `transferlab.options.SCRATCH_RECIPES`; explicit values win over the recipe's). `head` is "mlp" (Dense `hidden` + dropout `dropout`) or "linear". `augment` is an
    AugmentConfig or a preset name ("notebook", "light", "none"); None means light views for augment and
    finetune, the recipe's preset for scratch. `end_to_end` (augment, finetune): True augments afresh in
    every batch and runs the frozen base on the fly, False trains from cached features of `views` views;
    None picks end to end on a GPU, cached on a CPU. `runtime` runs the frozen trunk: "auto" (ONNX Runtime on a
    CPU, PyTorch on CUDA), "onnx", "torch" or a name registered with `transferlab.runtimes.register_runtime`.
    `precision` of the frozen trunk (extract, augment): "float32", "int8" (ONNX Runtime static quantisation,
    calibrated on up to 300 training images, cached; the run folder keeps the int8 trunk) or "auto" (int8 for the
    backbones measured to lose at most 0.3 points with it, `options.INT8_DEFAULT_BACKBONES`).
    `verbose` as in Keras: 0 silent (as `quiet`), 1 progress bars, 2 one line per epoch and no bars (logs, CI).
    """
    started = time.perf_counter()
    quiet = quiet or check_verbose(verbose) == 0
    console = console or Console(quiet=quiet, stderr=True)
    check_strategy(strategy)
    fractions = split_fractions(split)
    check_split_csv_alone(split_csv, include=include, exclude=exclude, max_per_class=max_per_class)
    check_tta(tta)
    check_precision(precision, runtime, strategy)
    default_batch_size, default_lr, default_epochs = default_fit(strategy, recipe)
    options = TrainOptions(
        backbone=backbone or default_backbone(strategy, recipe),
        layer=layer,
        weights=str(weights) if weights else None,
        head=head,
        hidden=hidden,
        dropout=dropout,
        fit=FitConfig(
            epochs=default_epochs if epochs is None else epochs,
            batch_size=default_batch_size if batch_size is None else batch_size,
            lr=default_lr if lr is None else lr,
            optimizer=optimizer,
            weight_decay=weight_decay,
            class_weight=class_weight,
            patience=patience,
            seed=seed,
        ),
        device=device,
        runtime=runtime,
        precision=precision if strategy in INT8_STRATEGIES else "float32",
        extract_batch_size=extract_batch_size,
        cache_dir=Path(cache_dir) if cache_dir else None,
        quiet=quiet or verbose == 2,
        log_epochs=not quiet and verbose == 2,
        views=views,
        unfreeze=unfreeze,
        finetune_lr=finetune_lr,
        finetune_epochs=finetune_epochs,
        augment=AugmentConfig.preset(augment) if isinstance(augment, str) else augment,
        end_to_end=end_to_end,
        recipe=(recipe or "default") if strategy == "scratch" else None,
    )
    check_featurewise(strategy, options.augment)
    check_backbone(strategy, options)  # before reading any image
    run_dir = unique_run_dir(out, data, strategy)
    check_destination(run_dir, overwrite)
    dataset = load_dataset(
        data, split=fractions, seed=seed, include=include, exclude=exclude, max_per_class=max_per_class,
        split_csv=split_csv,
    )
    console.print(dataset.summary_table())
    result = run_strategy(strategy, dataset, options)
    test = predict_test(result, tta)
    metrics = run_metrics(result, test, tta, time.perf_counter() - started)
    config = {
        "data": str(Path(data).resolve()),
        "strategy": strategy,
        "split": list(fractions),
        "seed": seed,
        "include": sorted(include) if include else None,
        "exclude": sorted(exclude) if exclude else None,
        "max_per_class": max_per_class,
        "split_csv": str(split_csv) if split_csv else None,
        "tta": tta,
        "precision": result.classifier.extractor.precision,  # "auto" resolved: the trunk the head was trained on
        "options": options.to_dict(),
        "layout": dataset.layout,
    }
    with staged(run_dir) as staging:  # the run folder appears complete, or not at all
        write_run(staging, result, config=config, metrics=metrics, test=test)
        write_report(staging, location=run_dir)
    classifier = result.classifier
    classifier.run_dir, classifier.metrics, classifier.history = run_dir, metrics, result.history
    console.print(run_summary(metrics, run_dir))
    return classifier


def check_backbone(strategy: str, options: TrainOptions) -> None:
    """Known backbone names; a combination of backbones (a+b) only where each one's cached features serve."""
    if len(backbone_names(options.backbone)) > 1 and (strategy not in COMBINABLE or runs_end_to_end(options)):
        raise TransferlabError(
            f"strategy {strategy!r}{' end to end' if strategy == 'augment' else ''} takes one backbone, "
            f"not the combination {options.backbone}",
            hint="combine backbones with --strategy extract, or augment with cached views (--cached)",
        )


def predict_test(result: StrategyResult, tta: int) -> TestPredictions:
    """The test split's probabilities, once: metrics, top losses and the report all read these."""
    test = result.split.test
    views, kept, failed = result.classifier.view_probabilities(test.paths, tta)
    return TestPredictions(
        paths=[path for path, ok in zip(test.paths, kept) if ok],
        labels=test.labels[kept],
        views=views,
        failed=failed,
        classes=result.split.classes,
        root=result.split.root,
    )


def run_metrics(result: StrategyResult, test: TestPredictions, tta: int, seconds: float) -> dict:
    split = result.split
    history = result.history
    best = history.epochs[history.best_epoch - 1] if history.epochs else {}
    metrics = evaluate_probabilities(test.labels, test.probabilities, split.classes)
    metrics["n_failed"] = len(test.failed)
    return {
        "test_accuracy": metrics["accuracy"],
        "top5_accuracy": metrics["top5_accuracy"],
        "macro_f1": metrics["macro_f1"],
        "val_accuracy": best.get("val_accuracy"),
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.epochs),
        "stopped_early": history.stopped_early,
        "test_is_validation": split.test_is_validation,
        "n_classes": len(split.classes),
        "n_train": len(split.train),
        "n_val": len(split.validation),
        "n_test": len(split.test),
        "n_skipped": len(split.skipped),
        "tta": tta,
        **tta_effect(test),
        "extract_seconds": round(result.extract_seconds, 3),
        "train_seconds": round(result.train_seconds, 3),
        "total_seconds": round(seconds, 3),
        "images_per_second": round(result.images_per_second, 1),
        **result.extra,
        "test": metrics,
    }


def tta_effect(test: TestPredictions) -> dict:
    """With TTA: the accuracy of the original view alone, and whether averaging over views helped."""
    if len(test.views) == 1:
        return {}
    with_tta = float((test.probabilities.argmax(1) == test.labels).mean())
    without = float((test.views[0].argmax(1) == test.labels).mean())
    return {"test_accuracy_no_tta": without, "tta_helped": with_tta > without}


def tta_line(metrics: dict) -> str:
    if "test_accuracy_no_tta" not in metrics:
        return ""
    verdict = "helped" if metrics["tta_helped"] else "did not help"
    return f"TTA over {metrics['tta']} views {verdict}: {metrics['test_accuracy_no_tta']:.1%} without it\n"


def run_summary(metrics: dict, run_dir: Path) -> str:
    top5 = f", top-5 {metrics['top5_accuracy']:.1%}" if metrics["top5_accuracy"] is not None else ""
    where = "validation (no test split)" if metrics["test_is_validation"] else "test"
    return (
        f"[bold green]{where} accuracy {metrics['test_accuracy']:.1%}[/]{top5} on {metrics['n_test']} images; "
        f"{metrics['total_seconds']:.1f} s total (features {metrics['extract_seconds']:.1f} s, "
        f"training {metrics['train_seconds']:.1f} s)\n"
        f"{tta_line(metrics)}"
        f"run folder: {run_dir}  (plots: {run_dir / 'accuracy.png'}, {run_dir / 'loss.png'})"
    )

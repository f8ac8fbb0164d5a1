"""The Python API: `transferlab.train("data/")` works; every knob is a keyword away."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console

from transferlab.augment import AugmentConfig
from transferlab.backbones import get_spec
from transferlab.classifier import Classifier
from transferlab.data import DatasetSplit, load_dataset
from transferlab.errors import TransferlabError
from transferlab.report import write_report
from transferlab.runs import unique_run_dir, write_run
from transferlab.strategies import (
    STRATEGIES,
    StrategyResult,
    TrainOptions,
    default_backbone,
    default_fit,
    run_strategy,
)
from transferlab.training import FitConfig


def train(
    data: str | Path,
    *,
    backbone: str | None = None,
    strategy: str = "extract",
    out: str | Path | None = None,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    max_per_class: int | None = None,
    split_csv: str | Path | None = None,
    epochs: int = 50,
    batch_size: int | None = None,
    lr: float | None = None,
    optimizer: str = "adam",
    head: str = "mlp",
    class_weight: str | None = None,
    patience: int | None = 8,
    layer: int | None = None,
    weights: str | Path | None = None,
    device: str = "auto",
    cache_dir: str | Path | None = None,
    views: int = 3,
    unfreeze: str | int = 1,
    finetune_lr: float = 1e-5,
    finetune_epochs: int = 10,
    augment: AugmentConfig | str | None = None,
    end_to_end: bool | None = None,
    tta: int = 1,
    quiet: bool = False,
    verbose: int = 1,
    console: Console | None = None,
) -> Classifier:
    """Train a classifier on a folder of images, evaluate it on the test split, write a run folder.

    Returns the trained `Classifier`, with `.metrics`, `.history` and `.run_dir` filled in.
    `backbone=None` means efficientnet_lite0, or the small baseline convnet for strategy="scratch";
    `batch_size=None` / `lr=None` mean the strategy's defaults (256 / 1e-3 for heads on cached features,
    32 / 3e-4 for scratch). `augment` is an AugmentConfig or a preset name ("notebook", "light", "none");
    None means light views for augment and finetune, the notebooks' settings for scratch. `end_to_end`
    (augment, finetune): True augments afresh in every batch and runs the frozen base on the fly, False trains
    from cached features of `views` views; None picks end to end on a GPU, cached on a CPU. `verbose` as in
    Keras: 0 silent (as `quiet`), 1 progress bars, 2 one line per epoch and no bars (logs, CI).
    """
    started = time.perf_counter()
    quiet = quiet or checked_verbose(verbose) == 0
    console = console or Console(quiet=quiet, stderr=True)
    if strategy not in STRATEGIES:
        raise TransferlabError(f"unknown strategy {strategy!r}", hint=f"choose one of: {', '.join(STRATEGIES)}")
    backbone = backbone or default_backbone(strategy)
    get_spec(backbone)  # unknown backbone: fail before reading any image
    default_batch_size, default_lr = default_fit(strategy)
    options = TrainOptions(
        backbone=backbone,
        layer=layer,
        weights=str(weights) if weights else None,
        head=head,
        fit=FitConfig(
            epochs=epochs,
            batch_size=default_batch_size if batch_size is None else batch_size,
            lr=default_lr if lr is None else lr,
            optimizer=optimizer,
            class_weight=class_weight,
            patience=patience,
            seed=seed,
        ),
        device=device,
        cache_dir=Path(cache_dir) if cache_dir else None,
        quiet=quiet or verbose == 2,
        log_epochs=not quiet and verbose == 2,
        views=views,
        unfreeze=str(unfreeze),
        finetune_lr=finetune_lr,
        finetune_epochs=finetune_epochs,
        augment=AugmentConfig.preset(augment) if isinstance(augment, str) else augment,
        end_to_end=end_to_end,
    )
    dataset = load_dataset(
        data,
        split=split,
        seed=seed,
        include=include,
        exclude=exclude,
        max_per_class=max_per_class,
        split_csv=split_csv,
    )
    console.print(dataset.summary_table())
    result = run_strategy(strategy, dataset, options)
    test_metrics = result.classifier.evaluate(result.split.test.paths, result.split.test.labels, tta=tta)
    # the original view's features are cached by the TTA pass, so the comparison costs only the head
    no_tta = result.classifier.evaluate(result.split.test.paths, result.split.test.labels) if tta > 1 else None
    run_dir = unique_run_dir(out, data, strategy)
    metrics = run_metrics(result, test_metrics, tta, time.perf_counter() - started, no_tta=no_tta)
    config = {
        "data": str(Path(data).resolve()),
        "strategy": strategy,
        "split": list(split),
        "seed": seed,
        "include": sorted(include) if include else None,
        "exclude": sorted(exclude) if exclude else None,
        "max_per_class": max_per_class,
        "split_csv": str(split_csv) if split_csv else None,
        "tta": tta,
        "options": options.to_dict(),
        "layout": dataset.layout,
    }
    write_run(run_dir, result, config=config, metrics=metrics)
    write_report(run_dir, cache_dir=options.cache_dir)
    classifier = result.classifier
    classifier.run_dir, classifier.metrics, classifier.history = run_dir, metrics, result.history
    console.print(run_summary(metrics, run_dir))
    return classifier


def checked_verbose(verbose: int) -> int:
    if verbose not in (0, 1, 2):
        raise TransferlabError(f"verbose must be 0, 1 or 2, got {verbose!r}",
                               hint="0: silent, 1: progress bars, 2: one line per epoch")
    return verbose


def run_metrics(result: StrategyResult, test: dict, tta: int, seconds: float, no_tta: dict | None = None) -> dict:
    split = result.split
    history = result.history
    best = history.epochs[history.best_epoch - 1] if history.epochs else {}
    return {
        "test_accuracy": test["accuracy"],
        "top5_accuracy": test["top5_accuracy"],
        "macro_f1": test["macro_f1"],
        "val_accuracy": best.get("val_accuracy"),
        "best_epoch": history.best_epoch,
        "epochs_run": len(history.epochs),
        "stopped_early": history.stopped_early,
        "test_is_validation": split.test_is_validation,
        "n_classes": len(split.classes),
        "n_train": len(split.train),
        "n_val": len(split.val),
        "n_test": len(split.test),
        "n_skipped": len(split.skipped),
        "tta": tta,
        **tta_effect(test, no_tta),
        "extract_seconds": round(result.extract_seconds, 3),
        "train_seconds": round(result.train_seconds, 3),
        "total_seconds": round(seconds, 3),
        "images_per_second": round(result.images_per_second, 1),
        **result.extra,
        "test": test,
    }


def tta_effect(test: dict, no_tta: dict | None) -> dict:
    """With TTA: the accuracy without it, and whether averaging over views helped (strictly better)."""
    if no_tta is None:
        return {}
    return {"test_accuracy_no_tta": no_tta["accuracy"], "tta_helped": test["accuracy"] > no_tta["accuracy"]}


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


def load(run: str | Path, cache_dir: str | Path | None = None) -> Classifier:
    """Load a trained classifier from its run folder."""
    return Classifier.load(run, cache_dir=Path(cache_dir) if cache_dir else None)


def compare(data: str | Path, strategies: Iterable[str] = ("scratch", "extract", "augment", "finetune"), **kwargs):
    """Every strategy on the same split, one run folder each, plus compare.csv / compare.md / plots.

    Keywords as `train` (see `transferlab.compare.compare`); returns a `Comparison`.
    """
    from transferlab.compare import compare as compare_strategies  # compare builds on train(): no import cycle

    return compare_strategies(data, strategies, **kwargs)


def dataset(data: str | Path, **kwargs) -> DatasetSplit:
    """The split `train` would use, without training (same keywords as `load_dataset`)."""
    return load_dataset(data, **kwargs)

"""The training pipeline behind `transferlab.train`: options -> data -> strategy -> test predictions (computed
once) -> metrics -> run folder -> report."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from rich.console import Console

from transferlab.data.augment import AugmentConfig
from transferlab.model.classifier import Classifier
from transferlab.model.confidence import fit_confidence, reference_rows
from transferlab.data.dataset import load_dataset
from transferlab.features.runtimes import check_precision, check_runtime
from transferlab.engines.local import RAY_TRAINED, check_engine, train_strategy
from transferlab.core.errors import TransferlabError
from transferlab.features.combined import backbone_names
from transferlab.model.metrics import evaluate_probabilities
from transferlab.core.config import (
    DEFAULT_SPLIT,
    INT8_STRATEGIES,
    FitConfig,
    TrainOptions,
    check_featurewise,
    check_split_csv_alone,
    check_strategy,
    check_tta,
    check_verbose,
    default_backbone,
    default_fit,
    split_fractions,
)
from transferlab.reports.report import write_report
from transferlab.runs.console import after_training
from transferlab.runs.writer import TestPredictions, check_destination, final_location, staged, unique_run_dir, write_run
from transferlab.strategies import StrategyResult
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
    finetune_lr: float | None = None,
    finetune_epochs: int = 10,
    augment: AugmentConfig | str | None = None,
    end_to_end: bool | None = None,
    recipe: str | None = None,
    image_size: int | None = None,
    batchnorm: str = "frozen",
    deadline: float | None = None,
    tta: int = 1,
    engine: str = "local",
    ray_address: str | None = None,
    workers: int | None = None,
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
    baseline, see `transferlab.core.config.SCRATCH_RECIPES`; explicit values win over the recipe's). `head` is "mlp" (Dense `hidden` + dropout `dropout`) or "linear". `augment` is an
    AugmentConfig or a preset name ("notebook", "light", "none"); None means light views for augment and
    finetune, the recipe's preset for scratch. `end_to_end` (augment, finetune): True augments afresh in
    every batch and runs the frozen base on the fly, False trains from cached features of `views` views;
    None picks end to end on a GPU, cached on a CPU. `unfreeze="all"` fine-tunes the whole network end to end
    (AdamW, one-cycle, label smoothing, discriminative learning rates; `finetune_lr=None` means 1e-3 there and
    RMSprop 1e-5 for the cached top block), with BatchNorm statistics `batchnorm="frozen"` or re-estimated
    ("train"). `image_size` replaces the backbone's input size everywhere (training, prediction, export).
    `deadline` (a `time.time()` value, used by strategy="auto" for its budget): no training epoch starts that
    would end after it; at least one always runs.
    `runtime` runs the frozen trunk: "auto" (ONNX Runtime on a
    CPU, PyTorch on CUDA), "onnx", "torch" or a name registered with `transferlab.features.runtimes.register_runtime`.
    `engine="ray"` computes the frozen features on a Ray cluster (`ray_address`: "auto", "HOST:PORT", or None
    for a local Ray instance) into the same cache, before training here (see `transferlab.engines.local`); with
    strategy "finetune" (end_to_end=True) or "scratch" it trains data-parallel on `workers` Ray Train workers
    (default: one per CPU, or GPU, of the cluster), checkpointing every epoch (a rerun resumes).
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
    check_runtime(runtime)
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
            deadline=deadline,
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
        image_size=image_size,
        batchnorm=batchnorm,
    )
    check_featurewise(strategy, options.augment)
    check_backbone(strategy, options)  # before reading any image
    check_engine(engine, strategy, runs_end_to_end(options), workers)
    if deadline is not None and engine == "ray" and strategy in RAY_TRAINED:
        raise TransferlabError("a deadline stops the local training loop; Ray Train workers do not see it",
                               hint="use engine='local', or leave deadline out")
    run_dir = unique_run_dir(out, data, strategy)
    check_destination(run_dir, overwrite)
    dataset = load_dataset(
        data, split=fractions, seed=seed, include=include, exclude=exclude, max_per_class=max_per_class,
        split_csv=split_csv,
    )
    console.print(dataset.summary_table())
    result = train_strategy(engine, strategy, dataset, options, run_dir=run_dir, address=ray_address, workers=workers)
    result.classifier.tta_mirror = options.augment is None or options.augment.horizontal_flip
    fit_confidence_check(result.classifier, result.split, seed, known=result.split_features)
    test, test_features = predict_test(result, tta)
    metrics = run_metrics(result, test, tta, time.perf_counter() - started)
    metrics.update(confidence_metrics(result.classifier, test, test_features))
    config = {
        "data": str(Path(data).resolve()),
        "strategy": strategy,
        "split": list(fractions),
        "seed": seed,
        "include": sorted(include) if include else None,
        "exclude": sorted(exclude) if exclude else None,
        "max_per_class": max_per_class,
        "split_csv": str(final_location(split_csv)) if split_csv else None,  # compare's, inside its staging folder
        "tta": tta,
        "precision": result.classifier.extractor.precision,  # "auto" resolved: the trunk the head was trained on
        "options": options.to_dict(),
        "layout": dataset.layout,
        **({"engine": engine, "workers": result.extra.get("workers")} if engine != "local" else {}),
    }
    with staged(run_dir) as staging:  # the run folder appears complete, or not at all
        write_run(staging, result, config=config, metrics=metrics, test=test)
        write_report(staging, location=final_location(run_dir))
    classifier = result.classifier
    classifier.run_dir, classifier.metrics, classifier.history = run_dir, metrics, result.history
    console.print(after_training(metrics, result.history.epochs, final_location(run_dir)), soft_wrap=True)  # paths stay whole
    return classifier


def check_backbone(strategy: str, options: TrainOptions) -> None:
    """Known backbone names; a combination of backbones (a+b) only where each one's cached features serve."""
    if len(backbone_names(options.backbone)) > 1 and (strategy not in COMBINABLE or runs_end_to_end(options)):
        raise TransferlabError(
            f"strategy {strategy!r}{' end to end' if strategy == 'augment' else ''} takes one backbone, "
            f"not the combination {options.backbone}",
            hint="combine backbones with --strategy extract, or augment with cached views (--cached)",
        )
    if strategy == "scratch" and options.image_size is not None:
        raise TransferlabError(
            "--image-size does not apply to --strategy scratch: its networks are built for one input size",
            hint="choose the size with the backbone: small_cnn (128 px) or small_cnn_224",
        )


def fit_confidence_check(classifier: Classifier, split, seed: int,
                         known: dict[str, np.ndarray] | None = None) -> None:
    """Fit the low-confidence / out-of-distribution check (transferlab.model.confidence) on the trained model's
    features: at most MAX_REFERENCE training images as neighbours, thresholds from the validation images.
    `known`: the split's features a strategy already holds (StrategyResult.split_features), used as they are;
    otherwise features of the unchanged backbone come from the cache, and after fine-tuning they are computed
    once more."""
    rows = reference_rows(split.train.labels, seed=seed)
    if known is not None:
        train_features, train_labels, val_features = known["train"][rows], split.train.labels[rows], known["validation"]
    else:
        train = classifier.extractor.extract([split.train.paths[i] for i in rows], description="features: confidence")
        val = classifier.extractor.extract(split.validation.paths, description="features: confidence (validation)")
        train_features, train_labels, val_features = train.features, split.train.labels[rows][train.kept], val.features
    classifier.confidence = fit_confidence(
        train_features, train_labels, val_features, classifier.probabilities_from_features(val_features), seed=seed,
    )


def confidence_metrics(classifier: Classifier, test: TestPredictions, features: np.ndarray) -> dict:
    """The share of validation and test images the fitted check flags (a measure of its false alarms)."""
    check = classifier.confidence
    if check is None:
        return {}
    reasons = check.assess(features, test.probabilities)
    return {"low_confidence": {**check.to_json(),
                               "test_flagged": sum(r is not None for r in reasons) / max(1, len(reasons))}}


def predict_test(result: StrategyResult, tta: int) -> tuple[TestPredictions, np.ndarray]:
    """The test split's probabilities, once: metrics, top losses and the report all read these; and the test
    images' features (view 0), which the confidence check measures."""
    test = result.split.test
    views, kept, failed, features = result.classifier.view_outputs(test.paths, tta)
    return TestPredictions(
        paths=[path for path, ok in zip(test.paths, kept) if ok],
        labels=test.labels[kept],
        views=views,
        failed=failed,
        classes=result.split.classes,
        root=result.split.root,
    ), features


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
        "stop_reason": history.stop_reason,
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

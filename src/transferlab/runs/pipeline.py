"""The training pipeline behind `transferlab.train`: options -> data -> strategy -> test predictions (computed
once) -> metrics -> run folder -> report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console

from transferlab.core.config import (
    INT8_STRATEGIES,
    TrainOptions,
    check_featurewise,
    check_strategy,
    default_backbone,
)
from transferlab.core.errors import TransferlabError
from transferlab.core.run_folder import check_destination
from transferlab.core.settings import TrainSettings
from transferlab.data.augment import AugmentConfig
from transferlab.data.dataset import load_dataset
from transferlab.data.layouts import relative
from transferlab.engines.local import RAY_TRAINED, check_engine, train_strategy
from transferlab.features.combined import backbone_names
from transferlab.features.runtimes import check_precision, check_runtime
from transferlab.model.classifier import Classifier
from transferlab.model.confidence import fit_confidence, reference_rows
from transferlab.model.metrics import evaluate_probabilities
from transferlab.reports.report import write_report
from transferlab.runs.console import after_training
from transferlab.runs.explanations import write_explanations
from transferlab.runs.writer import TestPredictions, final_location, staged, unique_run_dir, write_run
from transferlab.strategies import StrategyResult
from transferlab.strategies.base import runs_end_to_end

COMBINABLE = ("extract", "augment")  # strategies whose every feature comes from a backbone's own cache


def train(data: str | Path, settings: TrainSettings, console: Console | None = None, *,
          epilogue: bool = True) -> Classifier:
    """The work behind `transferlab.train` (whose docstring describes the settings): train a classifier on a
    folder of images, evaluate it on the test split, write a run folder (complete, or not at all).

    Returns the trained `Classifier`, with `.metrics`, `.history` and `.run_dir` filled in. `epilogue=False`
    leaves out the closing block (epochs, result, next commands), for runs that are one step of a larger one (auto).
    """
    started = time.perf_counter()
    console = console or Console(quiet=settings.silent, stderr=True)
    strategy, split, engine = check_strategy(settings.strategy), settings.split, settings.engine
    check_runtime(settings.trunk.runtime)
    check_precision(settings.trunk.precision, settings.trunk.runtime, strategy)
    options = train_options(settings)
    check_featurewise(strategy, options.augment)
    check_backbone(strategy, options)  # before reading any image
    check_engine(engine.name, strategy, runs_end_to_end(options), engine.workers)
    if options.fit.deadline is not None and engine.name == "ray" and strategy in RAY_TRAINED:
        raise TransferlabError("a deadline stops the local training loop; Ray Train workers do not see it",
                               hint="use engine='local', or leave deadline out")
    run_dir = unique_run_dir(settings.out, data, strategy)
    check_destination(run_dir, settings.overwrite)
    dataset = load_dataset(data, seed=options.fit.seed, **split.dataset_keywords())
    console.print(dataset.summary_table())
    result = train_strategy(engine.name, strategy, dataset, options, run_dir=run_dir, address=engine.ray_address,
                            workers=engine.workers)
    result.classifier.tta_mirror = options.augment is None or options.augment.horizontal_flip
    fit_confidence_check(result.classifier, result.split, options.fit.seed, known=result.split_features)
    test, test_features = predict_test(result, settings.tta)
    metrics = run_metrics(result, test, settings.tta, time.perf_counter() - started)
    metrics.update(confidence_metrics(result.classifier, test, test_features))
    config = {
        "data": str(Path(data).resolve()),
        "strategy": strategy,
        "split": list(split.fractions),
        "seed": options.fit.seed,
        "include": sorted(split.include) if split.include else None,
        "exclude": sorted(split.exclude) if split.exclude else None,
        "max_per_class": split.max_per_class,
        "split_csv": str(final_location(split.split_csv)) if split.split_csv else None,  # compare's, in its staging folder
        **skipped_by_doctor(dataset),
        "tta": settings.tta,
        "precision": result.classifier.extractor.precision,  # "auto" resolved: the trunk the head was trained on
        "options": options.to_dict(),  # as the strategy read them, defaults resolved
        "settings": settings.to_dict(),  # as asked for, under the names of transferlab.train (core.options)
        "layout": dataset.layout,
        **({"engine": engine.name, "workers": result.extra.get("workers")} if engine.name != "local" else {}),
    }
    with staged(run_dir) as staging:  # the run folder appears complete, or not at all
        write_run(staging, result, config=config, metrics=metrics, test=test)
        write_explanations(staging, result.classifier, test, settings.explain)
        write_report(staging, location=final_location(run_dir))
    classifier = result.classifier
    classifier.run_dir, classifier.metrics, classifier.history = run_dir, metrics, result.history
    classifier.test_predictions = test  # auto explains its chosen candidate from these
    if epilogue:
        console.print(after_training(metrics, result.history.epochs, final_location(run_dir)), soft_wrap=True)  # paths stay whole
    return classifier


def train_options(settings: TrainSettings) -> TrainOptions:
    """The flat, resolved options a strategy reads: None settings take the strategy's (or recipe's) defaults."""
    strategy, recipe, trunk, head, tune = settings.strategy, settings.recipe, settings.trunk, settings.head, settings.finetune
    return TrainOptions(
        backbone=settings.backbone or default_backbone(strategy, recipe),
        layer=trunk.layer,
        weights=str(trunk.weights) if trunk.weights else None,
        head=head.kind,
        hidden=head.hidden,
        dropout=head.dropout,
        fit=settings.fit.resolved(strategy, recipe),
        device=settings.device,
        runtime=trunk.runtime,
        precision=trunk.precision if strategy in INT8_STRATEGIES else "float32",
        extract_batch_size=trunk.extract_batch_size,
        cache_dir=Path(trunk.cache_dir) if trunk.cache_dir else None,
        quiet=settings.silent or settings.verbose == 2,
        log_epochs=not settings.silent and settings.verbose == 2,
        views=tune.views,
        unfreeze=tune.unfreeze,
        finetune_lr=tune.lr,
        finetune_epochs=tune.epochs,
        finetune_batch_size=tune.batch_size,
        augment=asked_augmentation(settings.augment),
        end_to_end=tune.end_to_end,
        recipe=(recipe or "default") if strategy == "scratch" else None,
        image_size=trunk.image_size,
        batchnorm=tune.batchnorm,
    )


def asked_augmentation(augment: AugmentConfig | str | dict | None) -> AugmentConfig | None:
    """The augmentation asked for: a preset's name, an AugmentConfig's fields, or the record itself."""
    if isinstance(augment, str):
        return AugmentConfig.preset(augment)
    return AugmentConfig(**augment) if isinstance(augment, dict) else augment


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


def skipped_by_doctor(dataset) -> dict:
    """config.json's record of the files `skip` (doctor's findings) left out, relative to the data folder."""
    left_out = [relative(Path(s.path), dataset.root) for s in dataset.skipped if s.reason.startswith("doctor:")]
    return {"skipped_by_doctor": left_out} if left_out else {}

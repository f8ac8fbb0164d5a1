"""`--strategy auto`: the most accurate model this machine can train within a time budget.

The candidates and their costs come from the device auto runs on (`runs.auto_cost`: throughput measured at the
start, candidates by device). Heads on cached features (one backbone, or several combined) come first: their
features are extracted once (or read from the cache), and refitting a head costs seconds, so they are scored by
stratified k-fold cross-validation over train + validation (`model.selection`) and the best mean is trained as a
run. The test split is never read for the choice. Candidates that cannot be refitted cheaply (augmented views,
fine-tuning) are trained once and compared on the validation split: one replaces the choice only when it gains
more than one standard error of the validation estimate. A candidate whose estimate would overrun the budget is
skipped (and logged); once one model is trained, a later candidate's training stops at the epoch where the budget
would run out.

OUT holds the trained candidates' run folders (candidates/<label>/), compare.csv / compare.md / report.html over
them, auto.json (what was tried, each score and how it was obtained, what was skipped and why the choice), and the
chosen model itself, so that OUT loads, predicts and serves like any run folder.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from transferlab.core.config import precision_for
from transferlab.core.device import resolve_device
from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_write_bytes
from transferlab.core.options import DEFAULT_BUDGET
from transferlab.core.run_folder import EXPLANATIONS, check_destination
from transferlab.core.settings import SplitConfig, TrainSettings, train_settings
from transferlab.data.dataset import DatasetSplit, load_dataset
from transferlab.model.classifier import Classifier
from transferlab.model.selection import CrossValidation, cross_validate
from transferlab.reports.report import write_report
from transferlab.runs.auto_cost import (
    Candidate,
    CostModel,
    Throughput,
    cached_share,
    candidates_for,
    measure_throughput,
)
from transferlab.runs.compare import Comparison, row_of, short_backbone, write_comparison
from transferlab.runs.console import after_training
from transferlab.runs.explanations import write_explanations
from transferlab.runs.pipeline import train, train_options
from transferlab.runs.writer import staged, unique_run_dir
from transferlab.strategies.base import extraction_timing, make_extractor, train_head

FINISH_SECONDS = 20.0  # after the last candidate: the compare table, the report, the chosen model copied and explained
RUN_FILES = ("model.safetensors", "model.json", "labels.txt", "metrics.json", "config.json", "history.csv",
             "split.csv", "skipped.csv", "test_predictions.csv", "summary.json")


@dataclass
class Attempt:
    label: str
    strategy: str
    backbone: str
    estimated_seconds: float
    seconds: float | None = None
    cv_accuracy: float | None = None  # mean over the folds of train + validation
    cv_std: float | None = None
    folds: int | None = None
    cv_scores: tuple[float, ...] | None = None  # each fold's, the same folds for every candidate
    val_accuracy: float | None = None
    test_accuracy: float | None = None  # the trained runs' own, for the record: never part of the choice
    status: str = "skipped"  # skipped | cross-validated | trained
    reason: str = ""

    @property
    def score(self) -> str:
        """The score the choice read, and how it was obtained."""
        if self.cv_accuracy is not None:
            return f"cv {self.cv_accuracy:.1%} ± {self.cv_std:.1%}"
        return f"val {self.val_accuracy:.1%}" if self.val_accuracy is not None else "-"


def standard_error(accuracy: float, n: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(n, 1))


def better(challenger: Attempt, chosen: Attempt, n_val: int) -> bool:
    """A costlier candidate wins only by more than one standard error of the chosen one's validation accuracy."""
    return challenger.val_accuracy - chosen.val_accuracy > standard_error(chosen.val_accuracy, n_val)


def train_auto(
    data: str | Path,
    *,
    candidates: tuple[Candidate, ...] | None = None,
    throughput: Throughput | None = None,
    console: Console | None = None,
    **train_keywords,
) -> Classifier:
    """Train candidates within `budget` seconds (None: core.options.DEFAULT_BUDGET), keep the best (see the
    module docstring). Takes the keywords of `transferlab.train`, shared by every candidate: the candidates that
    use augmented views take `finetune={"views": N}`'s. `candidates` (default: the device's) and `throughput`
    (default: measured now) are for tests and benchmarks."""
    started = time.perf_counter()
    settings = train_settings({**train_keywords, "strategy": "auto"})
    console = console or Console(quiet=settings.silent, stderr=True)
    if settings.backbone is not None:
        raise TransferlabError("--strategy auto chooses the backbone itself", hint="drop --backbone")
    out_dir = unique_run_dir(settings.out, data, "auto")
    check_destination(out_dir, settings.overwrite)
    dataset = load_dataset(data, seed=settings.fit.seed, **settings.split.dataset_keywords())
    options = train_options(settings.updated(strategy="extract", budget=None))
    candidates = candidates or candidates_for(resolve_device(settings.device))
    throughput = throughput or measure_throughput(options, dataset.train.paths[:8], len(dataset.train))
    paths = [path for subset in dataset.subsets().values() for path in subset.paths]
    pretrained = dict.fromkeys(b for c in candidates if c.strategy != "scratch" for b in c.backbones)
    cached = {backbone: cached_share(options, backbone, paths) for backbone in pretrained}
    with staged(out_dir) as staging:  # a rerun that fails leaves the old folder whole
        dataset.write_split_csv(staging / "split.csv")
        cost = CostModel(len(dataset.train), len(dataset.validation), len(dataset.test), settings.finetune.epochs,
                         throughput=throughput, cached=cached)
        budget = settings.budget or DEFAULT_BUDGET
        console.print(f"auto: lite0 on {throughput.device}: {throughput.extract:.3g} images/s through its frozen "
                      f"trunk, {throughput.train:.3g} in training; budget {budget:.0f} s")
        search = Search(data, settings, dataset, staging, cost, deadline=started + budget - FINISH_SECONDS,
                        console=console)
        search.run(candidates)
        record = finish(search, out_dir, data, budget, throughput)
    classifier = Classifier.load(out_dir)
    classifier.metrics = {**classifier.metrics, "auto": record}
    classifier.history = search.classifiers[search.chosen.label].history
    return classifier


class Search:
    """The candidates tried in turn: heads on cached features cross-validated, the best of them trained, then
    the others trained and weighed against it on validation."""

    def __init__(self, data, settings: TrainSettings, dataset: DatasetSplit, staging: Path, cost: CostModel, *,
                 deadline: float, console: Console):
        self.data, self.settings, self.dataset, self.staging, self.cost = data, settings, dataset, staging, cost
        self.deadline, self.console = deadline, console  # a time.perf_counter() value
        self.attempts: list[Attempt] = []
        self.classifiers: dict[str, Classifier] = {}
        self.chosen: Attempt | None = None

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def run(self, candidates: tuple[Candidate, ...]) -> None:
        candidates = [replace(c, views=self.settings.finetune.views) if c.views else c for c in candidates]
        attempts = {c.label: Attempt(c.label, c.strategy, c.backbone, 0.0) for c in candidates}
        self.attempts = list(attempts.values())
        scored = []
        for candidate in (c for c in candidates if c.cross_validated):
            if self.cross_validate(candidate, attempts[candidate.label], first=not scored):
                scored.append((candidate, attempts[candidate.label]))
        if scored:
            best, attempt = chosen_by_cross_validation(scored)
            self.train(best, attempt)
            self.chosen = attempt
        for candidate in candidates:
            if not candidate.cross_validated and self.fits(candidate, attempts[candidate.label]):
                attempt = self.train(candidate, attempts[candidate.label])
                if self.chosen is None or better(attempt, self.chosen, len(self.dataset.validation)):
                    self.chosen = attempt

    def fits(self, candidate: Candidate, attempt: Attempt, reserve: float = 0.0) -> bool:
        """Whether the candidate's estimate fits what is left of the budget (less `reserve`); the first always."""
        estimate = self.cost.estimate(candidate)
        attempt.estimated_seconds = round(estimate, 1)
        left = self.left() - reserve
        if (self.chosen is None and not self.classifiers and reserve == 0.0) or estimate <= left:
            return True
        attempt.reason = f"estimated {estimate:.0f} s, {max(left, 0):.0f} s of the budget left"
        self.console.print(f"[yellow]auto: skipped {candidate.label}: {attempt.reason}[/]")
        return False

    def cross_validate(self, candidate: Candidate, attempt: Attempt, first: bool) -> bool:
        """Score a head on cached features by k-fold cross-validation over train + validation; False when
        it does not fit the budget (its run, should it win, is kept in reserve)."""
        if not self.fits(candidate, attempt, reserve=0.0 if first else self.cost.final_run(candidate)):
            return False
        started = time.perf_counter()
        options = train_options(self.candidate_settings(candidate))
        features, labels, extracted = train_and_validation_features(options, self.dataset)
        if len(candidate.backbones) == 1:
            self.cost.record_extraction(candidate.backbone, extraction_timing(extracted)[1])
        self.cost.done(candidate)
        fitting = time.perf_counter()
        result = cross_validated(options, features, labels, len(self.dataset.classes))
        self.cost.record_cross_validation(candidate, time.perf_counter() - fitting)
        attempt.cv_accuracy, attempt.cv_std, attempt.folds = result.mean, result.std, result.folds
        attempt.cv_scores = result.scores
        attempt.seconds, attempt.status = round(time.perf_counter() - started, 1), "cross-validated"
        self.console.print(f"auto: {candidate.label}: {result} in {attempt.seconds:.0f} s")
        return True

    def train(self, candidate: Candidate, attempt: Attempt) -> Attempt:
        """The candidate trained into staging/candidates/<label>, validated on the validation split."""
        estimate = self.cost.final_run(candidate) if candidate.cross_validated else attempt.estimated_seconds
        self.console.rule(f"[bold]auto: {candidate.label} (estimated {estimate:.0f} s)")
        started = time.perf_counter()
        fallback = bool(self.classifiers)  # once a model exists, training stops where the budget would run out
        deadline = time.time() + self.left() - self.cost.after_training(candidate) if fallback else None
        classifier = train(self.data, self.candidate_settings(candidate, deadline), self.console, epilogue=False)
        seconds = time.perf_counter() - started
        self.cost.record(candidate, classifier.metrics, seconds)
        attempt.seconds = round((attempt.seconds or 0) + seconds, 1)
        attempt.val_accuracy = classifier.metrics["val_accuracy"]
        attempt.test_accuracy = classifier.metrics["test_accuracy"]
        attempt.status = "trained"
        attempt.reason = "training stopped where the budget ran out" if classifier.history.out_of_time else ""
        self.console.print(f"auto: {candidate.label}: validation accuracy {attempt.val_accuracy:.1%} in {seconds:.0f} s"
                           + (f" ({attempt.reason})" if attempt.reason else ""))
        self.classifiers[candidate.label] = classifier
        return attempt

    def candidate_settings(self, candidate: Candidate, deadline: float | None = None) -> TrainSettings:
        """The shared settings with the candidate's own winning over them."""
        return self.settings.updated(
            strategy=candidate.strategy, backbone=candidate.backbone, budget=None,
            out=self.staging / "candidates" / candidate.label, split=SplitConfig(split_csv=self.staging / "split.csv"),
            head={"kind": candidate.head} if candidate.head else {},
            finetune={"unfreeze": candidate.unfreeze} if candidate.unfreeze else {},
            # int8 quantises the frozen trunk of extract and augment only
            trunk={"precision": precision_for(candidate.strategy, self.settings.trunk.precision)},
            fit={"deadline": deadline} if deadline is not None else {},
            explain=0,  # heatmaps for the chosen candidate only, in finish
        )


def chosen_by_cross_validation(scored: list[tuple[Candidate, Attempt]]) -> tuple[Candidate, Attempt]:
    """The highest mean (on a tie, the cheaper, earlier one); but a linear head on the same features as the best
    when it is within one standard error of the best's mean: the simpler model where the folds cannot tell them
    apart (the one-standard-error rule, `CrossValidation.standard_error`). On Caltech-101/97 the MLP on all three
    backbones led the linear head by 0.06-0.25 points in cross-validation and trailed it by 0.6-1.0 on test."""
    best = max(scored, key=lambda pair: pair[1].cv_accuracy)
    noise = CrossValidation(best[1].cv_scores).standard_error
    for candidate, attempt in scored:
        if candidate.head == "linear" and best[0].head != "linear" and candidate.backbone == best[0].backbone:
            if best[1].cv_accuracy - attempt.cv_accuracy <= noise:
                return candidate, attempt
    return best


def train_and_validation_features(options, dataset: DatasetSplit):
    """(features, labels) of the training and validation images that decode, and the extractions; the test
    split is not read."""
    extractor = make_extractor(options)
    extractor.calibrate_on(dataset.train.paths)
    subsets = (dataset.train, dataset.validation)
    results = [extractor.extract(subset.paths, description=f"features: {name}")
               for subset, name in zip(subsets, ("train", "validation"))]
    labels = np.concatenate([subset.labels[result.kept] for subset, result in zip(subsets, results)])
    return np.concatenate([result.features for result in results]), labels, results


def cross_validated(options, features: np.ndarray, labels: np.ndarray, n_classes: int) -> CrossValidation:
    """The held-out accuracy of the candidate's head fitted on the other folds, as its run fits it on the
    training split: the held-out fold stands in for the validation split (early stopping, best weights)."""
    quiet = replace(options, quiet=True, log_epochs=False)
    inputs, targets = torch.tensor(features), torch.tensor(labels.astype(np.int64))

    def held_out_accuracy(train_rows: np.ndarray, held_rows: np.ndarray) -> float:
        _, _, history = train_head(quiet, (inputs[train_rows], targets[train_rows]),
                                   (inputs[held_rows], targets[held_rows]), n_classes)
        return history.epochs[history.best_epoch - 1]["val_accuracy"]

    threads = torch.get_num_threads()
    # one thread: a small head gains little from intra-op threads, and on a busy 2-core machine two threads
    # spinning for each other made a Caltech-101/97 head fit 10x slower (48 s vs 4.9 s for 15 epochs)
    torch.set_num_threads(1)
    try:
        return cross_validate(labels, held_out_accuracy, seed=options.fit.seed)
    finally:
        torch.set_num_threads(threads)


def choice_table(attempts: list[Attempt], chosen: Attempt) -> Table:
    """Each candidate's score and how it was obtained (cv mean ± std over the folds, or val), its seconds."""
    table = Table(title="auto: candidates")
    for header, justify in (("candidate", "left"), ("backbone", "left"), ("score", "right"), ("s", "right"),
                            ("", "left")):
        table.add_column(header, justify=justify, no_wrap=header != "")
    for attempt in attempts:
        name = attempt.label.replace("-" + attempt.backbone.replace("+", "_"), "")
        note = ("chosen" if attempt is chosen else "skipped" if attempt.status == "skipped"
                else "stopped by budget" if attempt.reason else "")
        table.add_row(name, short_backbone(attempt.backbone), attempt.score,
                      f"{attempt.seconds:.0f}" if attempt.seconds is not None else "", note)
    return table


def why_chosen(chosen: Attempt, attempts: list[Attempt], n_val: int) -> str:
    after = (f"and no costlier candidate above its validation accuracy ({chosen.val_accuracy:.2%}) by more than one "
             f"standard error (+-{standard_error(chosen.val_accuracy, n_val):.2%} on {n_val} images)")
    if chosen.cv_accuracy is not None:
        best = max((a for a in attempts if a.cv_accuracy is not None), key=lambda a: a.cv_accuracy)
        if best is not chosen:
            return (f"a linear head: its {chosen.folds}-fold cross-validation accuracy ({chosen.cv_accuracy:.2%}) is "
                    f"within one standard error of the best's ({best.label}, {best.cv_accuracy:.2%}), where the simpler "
                    f"model wins; {after}")
        return (f"highest {chosen.folds}-fold cross-validation accuracy over train + validation "
                f"({chosen.cv_accuracy:.2%} ± {chosen.cv_std:.2%}) among the heads on cached features, {after}")
    return (f"highest validation accuracy ({chosen.val_accuracy:.2%}) among the candidates trained, a costlier one "
            f"counting as better only by more than one standard error (+-{standard_error(chosen.val_accuracy, n_val):.2%}"
            f" on {n_val} validation images)")


def finish(search: Search, out_dir: Path, data, budget: float, throughput: Throughput) -> dict:
    """compare table and report over the trained candidates, auto.json (returned), and the chosen model copied
    into the staging folder that becomes `out_dir`."""
    staging, classifiers, chosen, console = search.staging, search.classifiers, search.chosen, search.console
    comparison = Comparison(
        staging, [{**row_of(label, c, staging), "strategy": label} for label, c in classifiers.items()], classifiers
    )
    write_comparison(comparison, title=f"{Path(data).resolve().name}: auto, budget {budget:.0f} s")
    why = why_chosen(chosen, search.attempts, len(search.dataset.validation))
    record = {"budget_seconds": round(budget, 1), "chosen": chosen.label, "why": why,
              "throughput": asdict(throughput), "candidates": [asdict(a) for a in search.attempts]}
    atomic_write_bytes(staging / "auto.json", (json.dumps(record, indent=2) + "\n").encode())
    for name in RUN_FILES:
        shutil.copy2(staging / "candidates" / chosen.label / name, staging / name)
    kept, chosen_dir = classifiers[chosen.label], staging / "candidates" / chosen.label
    write_explanations(chosen_dir, kept, kept.test_predictions, search.settings.explain)
    write_report(chosen_dir, location=out_dir / "candidates" / chosen.label)  # the report the table links to
    if (chosen_dir / EXPLANATIONS).is_dir():
        shutil.copytree(chosen_dir / EXPLANATIONS, staging / EXPLANATIONS)
    write_report(staging, location=out_dir)
    console.print(choice_table(search.attempts, chosen))
    console.print(f"[bold green]auto chose {chosen.label}[/]: {why}")
    console.print(after_training(kept.metrics, kept.history.epochs, out_dir), soft_wrap=True)  # paths stay whole
    return record

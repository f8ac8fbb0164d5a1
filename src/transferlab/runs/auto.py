"""`--strategy auto`: the most accurate model this machine can train within a time budget.

Candidates run in order of expected gain per second: a head on lite0 features (the cheapest), on lite2, on the
two combined (whose features are already cached by then), on all three embedded backbones, then lite0 with
augmented views and fine-tuning. Each one's cost is estimated before it runs, from the images it still has to
pass through each trunk and that trunk's speed (measured once it has run, scaled by FLOPs until then); a
candidate that would overrun the budget is skipped (and logged), and once one model is trained, a later
candidate's training stops at the epoch where the budget would run out. The model kept is chosen on validation
accuracy with a noise margin: a costlier candidate replaces the current choice only when it gains more than one
standard error of the validation estimate.

OUT holds the candidates' run folders (candidates/<label>/), compare.csv / compare.md / report.html over them,
auto.json (what was tried, skipped and why the choice), and the chosen model itself, so that OUT loads, predicts
and serves like any run folder.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from rich.console import Console

from transferlab.model.classifier import Classifier
from transferlab.runs.compare import Comparison, row_of, write_comparison
from transferlab.data.dataset import load_dataset
from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_write_bytes
from transferlab.core.config import TrainOptions, precision_for
from transferlab.core.settings import SplitConfig, TrainSettings, train_settings
from transferlab.runs.console import after_training
from transferlab.runs.pipeline import train
from transferlab.reports.report import write_report
from transferlab.runs.writer import check_destination, staged, unique_run_dir

# Measured once with torch.utils.flop_counter on the trunks (2 FLOPs per multiply-add), at each backbone's input size.
GFLOPS_PER_IMAGE = {"efficientnet_lite0": 0.77, "efficientnet_lite1": 1.20, "efficientnet_lite2": 1.72}
PRIOR_SECONDS_PER_GFLOP = 1 / 60.0  # lite0 at ~80 img/s end to end on a 2-core CPU, before anything is measured
RUN_SECONDS = 10.0  # a run's cost besides extraction (head, test predictions, run folder, report) until measured
# Costs relative to one image through a backbone's plain (cached) extraction, measured on Caltech-101/97 with
# lite0 on the 2-core CPU (docs/benchmarks.md, "auto within its budget"): an augmented view (decoded, augmented
# and passed through the trunk, its head trained on it), and one fine-tuning epoch of the top block from cached
# activations, per training image.
AUGMENTED_VIEW_COST = 1.3
FINETUNE_EPOCH_COST = 0.27
FINISH_SECONDS = 20.0  # after the last candidate: the compare table, the report, the chosen model copied
RUN_FILES = ("model.safetensors", "model.json", "labels.txt", "metrics.json", "config.json", "history.csv",
             "split.csv", "skipped.csv", "test_predictions.csv", "summary.json")


@dataclass(frozen=True)
class Candidate:
    strategy: str
    backbone: str
    views: int = 0  # augmented views of each training image (augment, finetune)
    head: str | None = None  # None: the default head

    @property
    def label(self) -> str:
        return f"{self.strategy}-{self.backbone.replace('+', '_')}" + (f"-{self.head}" if self.head else "")

    @property
    def backbones(self) -> list[str]:
        return self.backbone.split("+")


CANDIDATES = (
    Candidate("extract", "efficientnet_lite0"),
    Candidate("extract", "efficientnet_lite2"),
    Candidate("extract", "efficientnet_lite0+efficientnet_lite2"),
    Candidate("extract", "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2"),
    # a linear head on the 4,000 combined features: the best on Caltech-101/97 (95.8% vs 95.2% with the MLP)
    Candidate("extract", "efficientnet_lite0+efficientnet_lite1+efficientnet_lite2", head="linear"),
    Candidate("augment", "efficientnet_lite0", views=3),
    Candidate("finetune", "efficientnet_lite0", views=3),
)


@dataclass
class Attempt:
    label: str
    strategy: str
    backbone: str
    estimated_seconds: float
    seconds: float | None = None
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    status: str = "skipped"
    reason: str = ""


class CostModel:
    """Seconds a candidate should take: the images it still has to pass through each trunk, in plain-extraction
    equivalents, times that trunk's measured seconds per image, plus a run's cost besides extraction."""

    def __init__(self, n_train: int, n_validation: int, n_test: int,
                 finetune_epochs: int = TrainOptions.finetune_epochs):
        self.n_train, self.n_other, self.n_test = n_train, n_validation + n_test, n_test
        self.finetune_epochs = finetune_epochs
        self.seconds_per_image: dict[str, float] = {}  # measured by a plain extraction of that backbone alone
        self.run_seconds = RUN_SECONDS
        self.extracted: set[tuple[str, int]] = set()  # (backbone, views) whose features are cached

    def per_image(self, backbone: str) -> float:
        """Measured, or scaled by FLOPs from the costliest measured rate per GFLOP: FLOPs understate the small
        trunks (lite0 costs ~1.4x more per GFLOP than lite2 here), so estimates err on the long side."""
        if backbone in self.seconds_per_image:
            return self.seconds_per_image[backbone]
        per_gflop = max((s / GFLOPS_PER_IMAGE.get(b, 2.0) for b, s in self.seconds_per_image.items()),
                        default=PRIOR_SECONDS_PER_GFLOP)
        return GFLOPS_PER_IMAGE.get(backbone, 2.0) * per_gflop

    def images(self, candidate: Candidate, backbone: str) -> float:
        if candidate.strategy == "finetune":  # its activations at the cut are its own: every image and view
            return (self.n_train * (1 + candidate.views * AUGMENTED_VIEW_COST) + self.n_other
                    + self.finetune_epochs * self.n_train * FINETUNE_EPOCH_COST)
        work = 0.0 if (backbone, 0) in self.extracted else self.n_train + self.n_other
        if candidate.views and (backbone, candidate.views) not in self.extracted:
            work += self.n_train * candidate.views * AUGMENTED_VIEW_COST
        return work

    def estimate(self, candidate: Candidate) -> float:
        return self.run_seconds + sum(self.images(candidate, b) * self.per_image(b) for b in candidate.backbones)

    def after_training(self, candidate: Candidate) -> float:
        """What a candidate still costs once its training ends: test predictions (through a fine-tuned trunk
        they are computed afresh) and the run folder."""
        fresh = self.n_test * self.per_image(candidate.backbone) if candidate.strategy == "finetune" else 0.0
        return RUN_SECONDS + fresh

    def record(self, candidate: Candidate, metrics: dict, seconds: float) -> None:
        if candidate.strategy == "extract":
            if len(candidate.backbones) == 1 and metrics.get("images_per_second"):
                self.seconds_per_image[candidate.backbone] = 1 / metrics["images_per_second"]
            self.run_seconds = max(self.run_seconds, seconds - metrics["extract_seconds"])
        self.extracted.update((b, 0) for b in candidate.backbones)
        if candidate.views and candidate.strategy != "finetune":
            self.extracted.update((b, candidate.views) for b in candidate.backbones)


def standard_error(accuracy: float, n: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(n, 1))


def better(challenger: Attempt, chosen: Attempt, n_val: int) -> bool:
    """A costlier candidate wins only by more than one standard error of the chosen one's validation accuracy."""
    return challenger.val_accuracy - chosen.val_accuracy > standard_error(chosen.val_accuracy, n_val)


def default_budget(cost: CostModel) -> float:
    """Enough for the three embedded backbones and their combinations on this data, 2 to 30 minutes."""
    return min(max(2 * sum(cost.estimate(c) for c in CANDIDATES[:5]), 120.0), 1800.0)


def train_auto(
    data: str | Path,
    *,
    candidates: tuple[Candidate, ...] = CANDIDATES,
    console: Console | None = None,
    **train_keywords,
) -> Classifier:
    """Train candidates within `budget` seconds (None: fitted to the data size), keep the best on validation.
    Takes the keywords of `transferlab.train`, shared by every candidate: the candidates that use augmented views
    take `finetune={"views": N}`'s."""
    started = time.perf_counter()
    settings = train_settings({**train_keywords, "strategy": "auto"})
    console = console or Console(quiet=settings.silent, stderr=True)
    if settings.backbone is not None:
        raise TransferlabError("--strategy auto chooses the backbone itself", hint="drop --backbone")
    out_dir = unique_run_dir(settings.out, data, "auto")
    check_destination(out_dir, settings.overwrite)
    dataset = load_dataset(data, seed=settings.fit.seed, **settings.split.dataset_keywords())
    with staged(out_dir) as staging:  # a rerun that fails leaves the old folder whole
        dataset.write_split_csv(staging / "split.csv")
        cost = CostModel(len(dataset.train), len(dataset.validation), len(dataset.test), settings.finetune.epochs)
        budget = settings.budget or default_budget(cost)
        attempts, classifiers, chosen = try_candidates(
            data, settings, staging, candidates, cost, deadline=started + budget - FINISH_SECONDS,
            n_val=len(dataset.validation), console=console)
        record = finish(staging, out_dir, data, attempts, classifiers, chosen, budget, len(dataset.validation), console)
    classifier = Classifier.load(out_dir)
    classifier.metrics = {**classifier.metrics, "auto": record}
    classifier.history = classifiers[chosen.label].history
    return classifier


def try_candidates(data, settings: TrainSettings, staging: Path, candidates: tuple[Candidate, ...], cost: CostModel,
                   *, deadline: float, n_val: int, console: Console) -> tuple[list[Attempt], dict[str, Classifier], Attempt]:
    """Each candidate trained into staging/candidates/<label>, or skipped when it would end after `deadline` (a
    `time.perf_counter()` value); (every attempt, the classifiers trained, the attempt chosen)."""
    attempts, classifiers, chosen = [], {}, None
    for candidate in candidates:
        candidate = replace(candidate, views=settings.finetune.views) if candidate.views else candidate
        estimate = cost.estimate(candidate)
        attempt = Attempt(candidate.label, candidate.strategy, candidate.backbone, round(estimate, 1))
        attempts.append(attempt)
        left = deadline - time.perf_counter()
        if chosen is not None and estimate > left:
            attempt.reason = f"estimated {estimate:.0f} s, {max(left, 0):.0f} s of the budget left"
            console.print(f"[yellow]auto: skipped {candidate.label}: {attempt.reason}[/]")
            continue
        console.rule(f"[bold]auto: {candidate.label} (estimated {estimate:.0f} s)")
        run_started = time.perf_counter()
        run = settings.updated(  # the candidate's own settings win over the shared ones
            strategy=candidate.strategy, backbone=candidate.backbone, budget=None,
            out=staging / "candidates" / candidate.label, split=SplitConfig(split_csv=staging / "split.csv"),
            head={"kind": candidate.head} if candidate.head else {},
            # int8 quantises the frozen trunk of extract and augment only
            trunk={"precision": precision_for(candidate.strategy, settings.trunk.precision)},
            # once a fallback exists, training stops where the budget would run out
            fit={"deadline": time.time() + left - cost.after_training(candidate)} if chosen is not None else {},
        )
        classifier = train(data, run, console, epilogue=False)  # only the chosen run's epilogue is shown, at the end
        attempt.seconds = round(time.perf_counter() - run_started, 1)
        cost.record(candidate, classifier.metrics, attempt.seconds)
        attempt.val_accuracy = classifier.metrics["val_accuracy"]
        attempt.test_accuracy = classifier.metrics["test_accuracy"]
        attempt.status = "trained"
        attempt.reason = "training stopped where the budget ran out" if classifier.history.out_of_time else ""
        console.print(f"auto: {candidate.label}: validation accuracy {attempt.val_accuracy:.1%} in {attempt.seconds:.0f} s"
                      + (f" ({attempt.reason})" if attempt.reason else ""))
        classifiers[candidate.label] = classifier
        if chosen is None or better(attempt, chosen, n_val):
            chosen = attempt
    return attempts, classifiers, chosen


def finish(staging, out_dir, data, attempts, classifiers, chosen, budget, n_val, console) -> dict:
    """compare table and report over the candidates, auto.json (returned), and the chosen model copied into the
    staging folder that becomes `out_dir`."""
    comparison = Comparison(
        staging, [{**row_of(label, c, staging), "strategy": label} for label, c in classifiers.items()], classifiers
    )
    write_comparison(comparison, title=f"{Path(data).resolve().name}: auto, budget {budget:.0f} s")
    why = (f"highest validation accuracy ({chosen.val_accuracy:.2%}) among the candidates trained, a costlier one "
           f"counting as better only by more than one standard error (+-{standard_error(chosen.val_accuracy, n_val):.2%}"
           f" on {n_val} validation images)")
    record = {"budget_seconds": round(budget, 1), "chosen": chosen.label, "why": why,
              "candidates": [asdict(a) for a in attempts]}
    atomic_write_bytes(staging / "auto.json", (json.dumps(record, indent=2) + "\n").encode())
    for name in RUN_FILES:
        shutil.copy2(staging / "candidates" / chosen.label / name, staging / name)
    write_report(staging, location=out_dir)
    console.print(Comparison(out_dir, comparison.rows, classifiers))
    console.print(f"[bold green]auto chose {chosen.label}[/]: {why}")
    kept = classifiers[chosen.label]
    console.print(after_training(kept.metrics, kept.history.epochs, out_dir), soft_wrap=True)  # paths stay whole
    return record

"""Every strategy on the same split: one run folder each, one table (CSV, markdown, terminal), overlay plots.

The split is drawn once and written to DIR/split.csv; every strategy's run reads it back, so all of them
train, validate and test on exactly the same files.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from transferlab.data.dataset import load_dataset
from transferlab.engines.local import check_engine
from transferlab.core.config import COMPARE_STRATEGIES, check_strategies, precision_for
from transferlab.core.errors import TransferlabError
from transferlab.core.run_folder import check_destination
from transferlab.core.settings import EngineConfig, SplitConfig, TrainSettings, train_settings
from transferlab.features.runtimes import check_precision
from transferlab.model.classifier import Classifier
from transferlab.reports.html import formatted
from transferlab.reports.report import write_report
from transferlab.runs.pipeline import train
from transferlab.runs.writer import final_location, staged, unique_run_dir
COLUMNS = (
    "strategy", "backbone", "recipe", "test_accuracy", "top5_accuracy", "val_accuracy", "epochs_run",
    "train_seconds", "extract_seconds", "total_seconds", "images_per_second", "run_dir",
)
NUMBER_COLUMNS = ("test acc.", "top-5", "train s", "extraction s", "total s", "img/s")  # the order of `formatted`
NARROW_NUMBER_COLUMNS = ("test acc.", "top-5", "total s")


@dataclass
class Comparison:
    out: Path
    rows: list[dict]
    classifiers: dict[str, Classifier]

    @classmethod
    def of(cls, classifiers: dict[str, Classifier], out: str | Path) -> Comparison:
        """A comparison of runs already trained on one split, whose run folders lie under `out`."""
        out = Path(out)
        for classifier in classifiers.values():
            if classifier.run_dir is None or not Path(classifier.run_dir).resolve().is_relative_to(out.resolve()):
                raise TransferlabError(f"run folder {classifier.run_dir} is not inside {out}",
                                       hint="train each run with out=<comparison folder>/<name>")
        return cls(out, [row_of(name, c, out) for name, c in classifiers.items()], dict(classifiers))

    def _repr_html_(self) -> str:
        from transferlab.reports.notebook import comparison_card  # notebooks only: keeps matplotlib unloaded

        return comparison_card(self)

    def plot(self, metrics: tuple[str, ...] = ("accuracy", "loss")):
        """Figure: validation `metrics` per epoch, one line per strategy."""
        from transferlab.reports.notebook import comparison_plot

        return comparison_plot(self, metrics)

    def table(self, width: int = 120) -> Table:
        """The rows side by side. Names stay whole; below 100 columns the timings other than the total give way."""
        table = Table(title=f"strategies compared ({self.out})")
        table.add_column("strategy", no_wrap=True)
        table.add_column("backbone", no_wrap=True)
        numbers = NUMBER_COLUMNS if width >= 100 else NARROW_NUMBER_COLUMNS
        for header in numbers:
            table.add_column(header, justify="right")
        for row in self.rows:
            name, backbone, *cells = formatted(row)
            short = short_backbone(backbone)
            values = dict(zip(NUMBER_COLUMNS, cells))
            # auto's candidate names spell the backbone out: the backbone column says it once
            table.add_row(name.replace("-" + backbone.replace("+", "_"), "") or name, short,
                          *(values[header] for header in numbers))
        return table

    def __rich_console__(self, console, options):
        yield self.table(options.max_width)


def short_backbone(name: str) -> str:
    """efficientnet_lite0+efficientnet_lite1 -> lite0+lite1: the family prefix every part shares is left out."""
    parts = name.split("+")
    family = parts[0].rpartition("_")[0]
    if family and len(parts) > 1 and all(part.startswith(family + "_") for part in parts):
        return "+".join(part.removeprefix(family + "_") for part in parts)
    return name


def compare(
    data: str | Path,
    strategies: Iterable[str] = COMPARE_STRATEGIES,
    *,
    scratch_backbone: str | None = None,
    scratch_recipe: str | None = None,
    console: Console | None = None,
    **train_keywords,
) -> Comparison:
    """Train every strategy on one split of `data`; write DIR/<strategy>/ runs, compare.csv, compare.md, plots.

    `train_keywords` are those of `transferlab.train` (out, overwrite, seed, epochs, split, fit, finetune, ...),
    shared by all runs; `split` chooses the files once, `backbone` applies to the transfer strategies,
    `scratch_backbone` (default: the recipe's small convnet) and `scratch_recipe` (default: "default"; "lesson" for
    the transfer-learning lesson's baseline) to scratch; the table names the recipe that ran. `engine="ray"` trains
    the strategies in parallel as Ray tasks (`transferlab.runs.ray_compare`, at the engine's `ray_address`), each
    one a local run sharing the feature cache.
    """
    settings = train_settings(train_keywords)
    strategies = check_strategies(strategies)
    check_engine(settings.engine.name)
    # before any work: the runs would refuse it only one by one
    check_precision(settings.trunk.precision, settings.trunk.runtime)
    console = console or Console(quiet=settings.silent, stderr=True)
    out_dir = unique_run_dir(settings.out, data, "compare")
    check_destination(out_dir, settings.overwrite)
    with staged(out_dir) as staging:  # a rerun that fails leaves the old comparison whole
        split_csv = settings.split.split_csv
        if split_csv is None:
            split_csv = staging / "split.csv"
            load_dataset(data, seed=settings.fit.seed, **settings.split.dataset_keywords()).write_split_csv(split_csv)
        runs = {strategy: run_settings(settings, strategy, scratch_backbone, scratch_recipe).updated(
            out=staging / strategy, split=SplitConfig(split_csv=split_csv), engine=EngineConfig(),
        ) for strategy in strategies}
        if settings.engine.name == "ray":
            from transferlab.runs.ray_compare import train_all

            classifiers = train_all(data, runs, address=settings.engine.ray_address, quiet=settings.silent)
        else:
            classifiers: dict[str, Classifier] = {}
            for strategy, run in runs.items():
                console.rule(f"[bold]{strategy}")
                classifiers[strategy] = train(data, run, console)
        comparison = Comparison.of(classifiers, staging)
        write_comparison(comparison, title=f"{Path(data).resolve().name}: strategies compared on one split")
        write_report(staging, location=out_dir)  # the strategies side by side, as every run folder has its own
    comparison = settled(comparison, out_dir)
    console.print(comparison)
    return comparison


def settled(comparison: Comparison, out_dir: Path) -> Comparison:
    """The comparison as it lies once its staging folder has been moved to `out_dir` (its runs with it)."""
    for classifier in comparison.classifiers.values():
        classifier.run_dir = final_location(classifier.run_dir)
    return Comparison(out_dir, comparison.rows, comparison.classifiers)


def run_settings(settings: TrainSettings, strategy: str, scratch_backbone: str | None,
                 scratch_recipe: str | None) -> TrainSettings:
    """One strategy's run: scratch takes its own backbone and recipe, int8 goes where it applies."""
    scratch = strategy == "scratch"
    return settings.updated(
        strategy=strategy,
        backbone=scratch_backbone if scratch else settings.backbone,
        recipe=(scratch_recipe or settings.recipe) if scratch else None,
        trunk={"precision": precision_for(strategy, settings.trunk.precision)},
    )


def row_of(strategy: str, classifier: Classifier, out_dir: Path) -> dict:
    metrics = classifier.metrics
    return {
        "strategy": strategy,
        "backbone": classifier.backbone,
        **{key: metrics.get(key) for key in COLUMNS[2:-1]},  # recipe: scratch's only
        "run_dir": str(Path(classifier.run_dir).resolve().relative_to(out_dir.resolve())),
    }


def write_comparison(comparison: Comparison, title: str) -> list[Path]:
    """compare.csv (raw numbers), compare.md (a readable table) and compare_{accuracy,loss}.png."""
    csv_path, md_path = comparison.out / "compare.csv", comparison.out / "compare.md"
    with csv_path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(comparison.rows)
    headers = ("strategy", "backbone", "test accuracy", "top-5", "train s", "extraction s", "total s", "images/s")
    lines = [
        f"# {title}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join([":---"] * 2 + ["---:"] * (len(headers) - 2)) + "|",
        *("| " + " | ".join(formatted(row)) + " |" for row in comparison.rows),
        "",
        "Validation accuracy and loss per epoch: compare_accuracy.png, compare_loss.png.",
    ]
    md_path.write_text("\n".join(lines) + "\n")
    histories = {name: c.history.epochs for name, c in comparison.classifiers.items()}
    from transferlab.reports.plots import save_comparison_curves  # matplotlib only when drawing: `import transferlab.api` stays light

    return [csv_path, md_path, *save_comparison_curves(histories, comparison.out)]

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

from transferlab.core.config import COMPARE_STRATEGIES, check_split_csv_alone, check_strategies, check_verbose, precision_for
from transferlab.core.errors import TransferlabError
from transferlab.data.dataset import load_dataset
from transferlab.engines.local import check_engine
from transferlab.features.runtimes import check_precision
from transferlab.model.classifier import Classifier
from transferlab.reports.html import formatted
from transferlab.reports.report import write_report
from transferlab.runs.pipeline import train
from transferlab.runs.writer import check_destination, final_location, staged, unique_run_dir
COLUMNS = (
    "strategy", "backbone", "recipe", "test_accuracy", "top5_accuracy", "val_accuracy", "epochs_run",
    "train_seconds", "extract_seconds", "total_seconds", "images_per_second", "run_dir",
)
NUMBER_COLUMNS = ("test acc.", "top-5", "train s", "extraction s", "total s", "img/s")  # the order of `formatted`
NARROW_NUMBER_COLUMNS = ("test acc.", "top-5", "total s")
# Keywords that choose the files; they are applied once, then every run reads DIR/split.csv instead.
SELECTION_KEYWORDS = ("split", "include", "exclude", "max_per_class")


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
    out: str | Path | None = None,
    overwrite: bool = False,
    seed: int = 0,
    split_csv: str | Path | None = None,
    scratch_backbone: str | None = None,
    scratch_recipe: str | None = None,
    engine: str = "local",
    ray_address: str | None = None,
    quiet: bool = False,
    verbose: int = 1,
    console: Console | None = None,
    **train_kwargs,
) -> Comparison:
    """Train every strategy on one split of `data`; write DIR/<strategy>/ runs, compare.csv, compare.md, plots.

    `train_kwargs` are `transferlab.train` keywords shared by all runs (backbone, epochs, views, ...);
    `backbone` applies to the transfer strategies, `scratch_backbone` (default: the recipe's small convnet) and
    `scratch_recipe` (default: "default"; "lesson" for the transfer-learning lesson's baseline) to scratch; the
    table names the recipe that ran. `engine="ray"` trains the strategies in parallel as Ray tasks
    (`transferlab.runs.ray_compare`; `ray_address` as for `train`), each one a local run sharing the feature cache.
    """
    strategies = check_strategies(strategies)
    check_engine(engine)
    if "precision" in train_kwargs:  # before any work: the runs would refuse it only one by one
        check_precision(train_kwargs["precision"], train_kwargs.get("runtime", "auto"))
    quiet = quiet or check_verbose(verbose) == 0
    console = console or Console(quiet=quiet, stderr=True)
    selection = {key: train_kwargs.pop(key) for key in SELECTION_KEYWORDS if key in train_kwargs}
    check_split_csv_alone(split_csv, **selection)
    out_dir = unique_run_dir(out, data, "compare")
    check_destination(out_dir, overwrite)
    with staged(out_dir) as staging:  # a rerun that fails leaves the old comparison whole
        if split_csv is None:
            split_csv = staging / "split.csv"
            load_dataset(data, seed=seed, **selection).write_split_csv(split_csv)
        runs = {strategy: run_keywords(strategy, train_kwargs, scratch_backbone, scratch_recipe) | {
            "out": staging / strategy, "seed": seed, "split_csv": split_csv, "quiet": quiet, "verbose": verbose,
        } for strategy in strategies}
        if engine == "ray":
            from transferlab.runs.ray_compare import train_all

            classifiers = train_all(data, runs, address=ray_address, quiet=quiet)
        else:
            classifiers: dict[str, Classifier] = {}
            for strategy, keywords in runs.items():
                console.rule(f"[bold]{strategy}")
                classifiers[strategy] = train(data, **keywords, console=console)
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


def run_keywords(strategy: str, train_kwargs: dict, scratch_backbone: str | None, scratch_recipe: str | None) -> dict:
    """`transferlab.train` keywords of one strategy's run: scratch takes its own backbone and recipe."""
    backbone = scratch_backbone if strategy == "scratch" else train_kwargs.get("backbone")
    recipe = {"recipe": scratch_recipe} if strategy == "scratch" else {}
    precision = {"precision": precision_for(strategy, train_kwargs["precision"])} if "precision" in train_kwargs else {}
    return {**train_kwargs, "backbone": backbone, **recipe, **precision, "strategy": strategy}


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

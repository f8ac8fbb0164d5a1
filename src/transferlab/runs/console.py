"""What the console keeps after training, as Keras and fastai keep theirs: a compact per-epoch table, where and
why training stopped, whether fine-tuning beat the frozen head, the result, the report and the next commands.

Everything here is read from the run's metrics and history (no training state), so it can be shown again for
any run folder.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text

MAX_TABLE_ROWS = 20  # longer runs show every Nth epoch, plus the first, the best and the last
COLUMNS = ("loss", "accuracy", "val_loss", "val_accuracy")


def shown_epochs(n_epochs: int, best_epoch: int, max_rows: int = MAX_TABLE_ROWS) -> tuple[list[int], int]:
    """The epochs (1-based) a table of at most about `max_rows` rows shows, and the step between them (1: all)."""
    if n_epochs <= max_rows:
        return list(range(1, n_epochs + 1)), 1
    step = -(-n_epochs // (max_rows - 2))  # room left for the best and the last epoch
    kept = set(range(1, n_epochs + 1, step)) | {best_epoch, n_epochs}
    return sorted(e for e in kept if 1 <= e <= n_epochs), step


def epoch_table(epochs: Sequence[dict], best_epoch: int, phase1_epochs: int | None = None,
                max_rows: int = MAX_TABLE_ROWS) -> Table:
    """epoch, loss, accuracy, val_loss, val_accuracy, seconds; the best epoch marked; fine-tuning's epochs in
    their own section after the head's."""
    shown, step = shown_epochs(len(epochs), best_epoch, max_rows)
    caption = f"one epoch in {step} shown, plus the best and the last" if step > 1 else None
    table = Table("epoch", *COLUMNS, "seconds", caption=caption, caption_justify="left")
    for column in table.columns[1:]:
        column.justify = "right"
    for epoch in shown:
        row = epochs[epoch - 1]
        if phase1_epochs and epoch == phase1_epochs + 1 and table.row_count:
            table.add_section()  # the fine-tuning phase starts here
        best = epoch == best_epoch
        table.add_row(
            f"{row['epoch']}{' best' if best else ''}",
            *(f"{row[name]:.4f}" for name in COLUMNS),
            f"{row['seconds']:.1f}",
            style="bold green" if best else None,
        )
    return table


def best_val_loss(epochs: Sequence[dict]) -> float | None:
    return min((row["val_loss"] for row in epochs), default=None)


def finetune_line(metrics: dict, epochs: Sequence[dict]) -> str | None:
    """Whether fine-tuning (phase 2) reached a lower validation loss than the frozen head (phase 1), and which
    model the run kept; None for strategies without a fine-tuning phase."""
    phase1 = metrics.get("phase1_epochs")
    if phase1 is None or "finetune_improved" not in metrics:
        return None
    head, tuned = best_val_loss(epochs[:phase1]), best_val_loss(epochs[phase1:])
    if head is None or tuned is None:
        return None
    if metrics["finetune_improved"]:
        return (f"fine-tuning improved on the frozen head: best val_loss {head:.4f} -> {tuned:.4f}; "
                "the fine-tuned model is kept")
    return (f"fine-tuning did not improve on the frozen head (best val_loss {head:.4f}, fine-tuned {tuned:.4f}); "
            "the frozen head is kept")


def tta_line(metrics: dict) -> str:
    if "test_accuracy_no_tta" not in metrics:
        return ""
    verdict = "helped" if metrics["tta_helped"] else "did not help"
    return f"TTA over {metrics['tta']} views {verdict}: {metrics['test_accuracy_no_tta']:.1%} without it\n"


def result_line(metrics: dict, run_dir: Path) -> str:
    top5 = f", top-5 {metrics['top5_accuracy']:.1%}" if metrics["top5_accuracy"] is not None else ""
    where = "validation (no test split)" if metrics["test_is_validation"] else "test"
    return (
        f"[bold green]{where} accuracy {metrics['test_accuracy']:.1%}[/]{top5} on {metrics['n_test']} images; "
        f"{metrics['total_seconds']:.1f} s total (features {metrics['extract_seconds']:.1f} s, "
        f"training {metrics['train_seconds']:.1f} s)\n"
        f"{tta_line(metrics)}"
        f"run folder: {run_dir}  (plots: {run_dir / 'accuracy.png'}, {run_dir / 'loss.png'})"
    )


def next_commands(run_dir: Path) -> str:
    run = shlex.quote(str(run_dir))
    return (f"report: {run_dir / 'report.html'}\n"
            f"next:   transferlab predict {run} IMAGE\n"
            f"        transferlab serve {run}")


def after_training(metrics: dict, epochs: Sequence[dict], run_dir: Path) -> Group:
    """The whole closing block `transferlab train` prints (not in --quiet or --json)."""
    parts: list = []
    if epochs:
        parts.append(epoch_table(epochs, metrics.get("best_epoch", 0), metrics.get("phase1_epochs")))
    if metrics.get("stop_reason"):
        parts.append(Text(metrics["stop_reason"]))
    tuned = finetune_line(metrics, epochs)
    if tuned:
        parts.append(Text(tuned))
    parts.append(result_line(metrics, run_dir))
    parts.append(Text(next_commands(run_dir)))
    return Group(*parts)

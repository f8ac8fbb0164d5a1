"""The record of a training run's epochs (Keras' History): written as the run folder's history.csv, read back by
reports and notebooks, kept by the training loop."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class History:
    """One dict per epoch: epoch, loss, accuracy, val_loss, val_accuracy, seconds."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    planned_epochs: int = 0
    patience: int | None = None
    stop_reason: str = ""  # where and why training stopped (describe_stop), for the console and the report
    out_of_time: bool = False  # stopped because the next epoch would have ended after FitConfig.deadline


    def column(self, name: str) -> list[float]:
        return [row[name] for row in self.epochs]

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "seconds"])
            writer.writeheader()
            writer.writerows(self.epochs)

    @classmethod
    def read_csv(cls, path: Path) -> History:
        with open(path, newline="") as f:
            rows = [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
        best = min(rows, key=lambda r: r["val_loss"])["epoch"] if rows else 0
        return cls(epochs=rows, best_epoch=best)

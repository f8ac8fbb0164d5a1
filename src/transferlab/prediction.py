"""The prediction record shared by the torch classifier and the torch-free ONNX predictor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table


@dataclass
class Prediction:
    """Top-k (label, probability) for one image, or the reason it could not be read."""

    source: str
    top: list[tuple[str, float]]
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @staticmethod
    def table(predictions: Sequence[Prediction]) -> Table:
        """One row per image: the top class, its probability, the next ones (or why the image was skipped)."""
        table = Table("image", "prediction", "probability", "next")
        for p in predictions:
            if p.error:
                table.add_row(p.source, f"[red]skipped: {p.error}[/]", "", "")
                continue
            label, prob = p.top[0]
            rest = ", ".join(f"{name} {share:.1%}" for name, share in p.top[1:])
            table.add_row(p.source, label, f"{prob:.1%}", rest)
        return table

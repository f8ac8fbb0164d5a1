"""The prediction record shared by the torch classifier and the torch-free ONNX predictor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from rich.table import Table


@dataclass
class Prediction:
    """Top-k (label, probability) for one image, or the reason it could not be read.

    `low_confidence`: True when the image is far from the training images or its top probability is unusually
    low (`low_confidence_reason` says which; see transferlab.confidence), False when it passed that check, None
    when the model has no fitted check (run folders from before it existed).
    """

    source: str
    top: list[tuple[str, float]]
    error: str | None = None
    low_confidence: bool | None = None
    low_confidence_reason: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    def flagged(self, reason: str | None) -> Prediction:
        """This prediction, checked: low confidence for `reason`, or confident when it is None."""
        return replace(self, low_confidence=reason is not None, low_confidence_reason=reason)

    def to_dict(self) -> dict:
        """The JSON record of `transferlab predict --format json`."""
        return {"image": self.source, "top": [{"label": label, "probability": p} for label, p in self.top],
                "error": self.error, "low_confidence": self.low_confidence,
                "low_confidence_reason": self.low_confidence_reason}

    @staticmethod
    def table(predictions: Sequence[Prediction]) -> Table:
        """One row per image: the top class, its probability, the next ones (or why the image was skipped)."""
        checked = any(p.low_confidence is not None for p in predictions)
        table = Table("image", "prediction", "probability", "next", *(["check"] if checked else []))
        for p in predictions:
            if p.error:
                table.add_row(p.source, f"[red]skipped: {p.error}[/]", "", "", *([""] if checked else []))
                continue
            label, prob = p.top[0]
            rest = ", ".join(f"{name} {share:.1%}" for name, share in p.top[1:])
            table.add_row(p.source, label, f"{prob:.1%}", rest, *([check_cell(p)] if checked else []))
        return table


def check_cell(prediction: Prediction) -> str:
    if prediction.low_confidence:
        return f"[yellow]low confidence[/]\n{prediction.low_confidence_reason}"
    return "" if prediction.low_confidence is None else "ok"

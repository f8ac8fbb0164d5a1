"""The prediction record shared by the torch classifier and the torch-free ONNX predictor."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Prediction:
    """Top-k (label, probability) for one image, or the reason it could not be read."""

    source: str
    top: list[tuple[str, float]]
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

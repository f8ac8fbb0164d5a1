"""Small classification heads trained on top of (cached) backbone features."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from transferlab.core.errors import TransferlabError

HEAD_KINDS = ("mlp", "linear")


@dataclass(frozen=True)
class HeadConfig:
    """`mlp` is the notebooks' head: Dense(hidden, relu) -> Dropout -> Dense(n_classes); `linear` is one layer."""

    kind: str
    in_features: int
    n_classes: int
    hidden: int = 256
    dropout: float = 0.5

    def __post_init__(self):
        if self.kind not in HEAD_KINDS:
            raise TransferlabError(f"unknown head {self.kind!r}", hint=f"choose one of: {', '.join(HEAD_KINDS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise TransferlabError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.n_classes < 2:
            raise TransferlabError(f"a classifier needs at least two classes, got {self.n_classes}")

    def to_dict(self) -> dict:
        return asdict(self)


def build_head(config: HeadConfig) -> nn.Module:
    """Logits out; softmax is applied by the loss and at prediction (binary problems use two logits too)."""
    if config.kind == "linear":
        return nn.Sequential(nn.Dropout(config.dropout), nn.Linear(config.in_features, config.n_classes))
    return nn.Sequential(
        nn.Linear(config.in_features, config.hidden),
        nn.ReLU(),
        nn.Dropout(config.dropout),
        nn.Linear(config.hidden, config.n_classes),
    )

"""Small classification heads trained on top of (cached) backbone features."""

from __future__ import annotations

from torch import nn

from transferlab.core.settings import HeadConfig  # the record is plain data (and the `head=` of train): in core


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

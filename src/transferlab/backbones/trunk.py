"""The frozen part of a network: a backbone wrapped to take raw uint8 images, cut at a block, exported to ONNX."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from transferlab.core.device import on_device
from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_path


class Trunk(torch.nn.Module):
    """uint8 NCHW images -> normalised -> backbone up to `layer` -> globally pooled features.

    Normalisation lives inside the network so that exported models take raw RGB bytes.
    `layer=None` gives the backbone's pre-logits features; an int picks the output of that stage
    (negative counts from the end), which suits images far from ImageNet. `pool=False` keeps the spatial
    map ([n, c, h, w]); with `layer=None` that is the output of `forward_features` (e.g. a split prefix).
    """

    def __init__(self, model: torch.nn.Module, mean, std, layer: int | None = None, pool: bool = True):
        super().__init__()
        self.model = model
        self.layer = layer
        self.pool = pool
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        if self.layer is None and not self.pool:
            return self.model.forward_features(x)
        if self.layer is None:
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        (x,) = self.model.forward_intermediates(x, indices=[self.layer], intermediates_only=True)
        return x.mean(dim=(2, 3)) if self.pool else x


def split_backbone(model: torch.nn.Module, boundary: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(prefix, tail): copies of `model` cut before `boundary`, a top-level child ("layer4") or an element of a
    top-level Sequential ("blocks.6").

    `prefix.forward_features(x)` gives the activations at the boundary and
    `tail.forward_head(tail.forward_features(a), pre_logits=True)` the pooled features from them: the modules
    on the other side are replaced by Identity, so both keep the model's own forward code and the tail's
    state_dict keys are those of the full model. This assumes children registered in forward order (true of
    timm's CNNs); models that add parameters between children (ViT's position embedding) do not split,
    which callers detect by comparing with the whole model.
    """
    container, _, index = boundary.partition(".")
    names = [name for name, _ in model.named_children()]
    if container not in names or (index and not index.isdigit()):
        raise TransferlabError(f"cannot split {type(model).__name__} at {boundary!r}: no such block")
    position = names.index(container)
    prefix, tail = copy.deepcopy(model), copy.deepcopy(model)
    for name in names[position + 1 :]:
        setattr(prefix, name, torch.nn.Identity())
    for name in names[:position]:
        setattr(tail, name, torch.nn.Identity())
    if index:
        setattr(prefix, container, getattr(prefix, container)[: int(index)])
        setattr(tail, container, getattr(tail, container)[int(index) :])
    else:
        setattr(prefix, container, torch.nn.Identity())
    return prefix, tail


def stage_count(model: torch.nn.Module) -> int:
    return len(model.feature_info) if hasattr(model, "feature_info") else 0


def input_names(count: int) -> list[str]:
    """ONNX input names: "images", or "images_0", "images_1", ... for a module that takes several batches."""
    return ["images"] if count == 1 else [f"images_{i}" for i in range(count)]


def export_onnx(
    module: torch.nn.Module, input_size: int | Sequence[int], path: Path, output_name: str = "features"
) -> Path:
    """Export a module taking uint8 NCHW batches (one per input size) to ONNX with a dynamic batch axis,
    atomically."""
    sizes = [input_size] if isinstance(input_size, int) else list(input_size)
    dummies = tuple(torch.zeros((2, 3, size, size), dtype=torch.uint8) for size in sizes)
    names = input_names(len(sizes))
    weight_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())  # about the file's size
    # on the CPU for the export only: the caller's module (a runtime's trunk, a classifier's network) stays put
    with atomic_path(path, weight_bytes) as tmp, warnings.catch_warnings(), on_device(module, "cpu") as on_cpu:
        # the TorchScript exporter is deprecated but exports timm CNNs reliably and fast
        warnings.simplefilter("ignore")
        torch.onnx.export(
            on_cpu,
            dummies,
            str(tmp),
            input_names=names,
            output_names=[output_name],
            dynamic_axes={**{name: {0: "batch"} for name in names}, output_name: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path

"""Grad-CAM: where in an image a classifier found the evidence for a class (Selvaraju et al. 2017; the Keras
lesson "visualizing heatmaps of class activation").

The map is taken at the trunk's last spatial activation (the output of `forward_features`, or of the stage `layer`
picks): each channel is weighted by the mean gradient of the class logit over it, summed, rectified and resized to
the network's input. For a combination of backbones each trunk gives its map, resized to the first trunk's input,
and the maps are averaged (in logit units, so each trunk counts by its share of the evidence).

Hand-written (a few dozen lines) rather than taken from a library: none is installed, and those that exist
(pytorch-grad-cam, captum) hook one module run end to end, while a transferlab model is one trunk per backbone
and a separate head over their pooled features. Only the tail is differentiated: the trunk runs to that activation
without gradients, the activation becomes a leaf, and pooling + head run with gradients from there, so an
explanation costs about two forward passes, one per map of `SHIFTS` (no backward pass through the backbone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferlab.backbones.trunk import Trunk
from transferlab.core.device import device_copy
from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_write_bytes
from transferlab.model.prediction import ImageInput

BATCH = 16  # images per forward pass: enough to keep the CPU's cores busy, little memory at 224-260 px
SHIFTS = (0.0, 0.5)  # the image as it is, then moved by half a map cell (Explainer.grad_cam)


@dataclass
class Explanation:
    """One image's heatmap: `heatmap` [h, w] in 0..1 over `image` (uint8 HxWx3, the image as the network saw it:
    resized and centre-cropped), for class `label` with `probability`; `predicted` is the top class. An image
    that could not be read has `error` and no heatmap."""

    source: str
    label: str | None = None
    probability: float = 0.0
    predicted: str | None = None
    heatmap: np.ndarray | None = None
    image: np.ndarray | None = None
    error: str | None = None

    @property
    def caption(self) -> str:
        shown = f"{self.label} {self.probability:.1%}"
        return shown if self.label == self.predicted else f"{shown} (predicted: {self.predicted})"

    def overlay(self):
        """PIL image: the heatmap over the image."""
        from transferlab.reports.heatmaps import overlay

        return overlay(self.image, self.heatmap)

    def panel(self):
        """PIL image: original | overlay, with the label and its probability below."""
        from transferlab.reports.heatmaps import side_by_side

        return side_by_side(self.image, self.heatmap, self.caption)

    def _repr_html_(self) -> str:
        from transferlab.reports.notebook import explanation_card

        return explanation_card(self)


class Explainer:
    """Grad-CAM for an extractor (one trunk, or several side by side) and the head over its pooled features.

    The trunks and the head run where the extractor runs (copies there; they rest on the CPU for everyone else)."""

    def __init__(self, extractor, head: torch.nn.Module, classes: Sequence[str]):
        self.parts = list(getattr(extractor, "parts", [extractor]))
        self.classes = list(classes)
        self.device = self.parts[0].device
        self.trunks = [device_copy(part.trunk(), self.device).eval() for part in self.parts]
        self.head = device_copy(head, self.device).eval()
        self.anchors: dict[int, tuple[float, float]] = {}  # where each trunk's map lies on its input

    def anchor(self, index: int, trunk: Trunk, side: int) -> tuple[float, float]:
        if index not in self.anchors:
            self.anchors[index] = receptive_field_anchor(trunk, side)
        return self.anchors[index]

    def explain(self, inputs: Sequence[ImageInput], target=None) -> list[Explanation]:
        """One Explanation per input, in order; `target` (a class name or index, or one per input) explains that
        class instead of the predicted one."""
        targets = self.target_indices(target, len(inputs))
        prepared = [self.prepare(item) for item in inputs]
        results = [Explanation(item.name, error=error) for item, (_, error) in zip(inputs, prepared)]
        usable = [i for i, (images, _) in enumerate(prepared) if images is not None]
        for start in range(0, len(usable), BATCH):
            chunk = usable[start : start + BATCH]
            batches = [np.stack([prepared[i][0][p] for i in chunk]) for p in range(len(self.parts))]
            maps, probabilities = self.grad_cam(batches, [targets[i] for i in chunk])
            for row, i in enumerate(chunk):
                index = int(probabilities[row].argmax()) if targets[i] is None else targets[i]
                results[i] = Explanation(inputs[i].name, self.classes[index], float(probabilities[row, index]),
                                         self.classes[int(probabilities[row].argmax())], maps[row], batches[0][row])
        return results

    def target_indices(self, target, count: int) -> list[int | None]:
        targets = list(target) if isinstance(target, (list, tuple)) else [target] * count
        if len(targets) != count:
            raise TransferlabError(f"target gives {len(targets)} classes for {count} images",
                                   hint="pass one class, or one per image")
        return [None if t is None else self.class_index(t) for t in targets]

    def class_index(self, name) -> int:
        if isinstance(name, (int, np.integer)) and 0 <= name < len(self.classes):
            return int(name)
        if name in self.classes:
            return self.classes.index(name)
        raise TransferlabError(f"no class {name!r} to explain", hint=f"classes: {', '.join(self.classes)}")

    def prepare(self, item: ImageInput) -> tuple[list[np.ndarray] | None, str | None]:
        """The image as each trunk takes it (uint8 HxWx3), or why it cannot be used."""
        if item.error:
            return None, item.error
        images = []
        for part in self.parts:
            image, reason = part.prepare_or_reason(item.value, item.name)
            if reason:
                return None, reason
            images.append(image)
        return images, None

    def grad_cam(self, batches: list[np.ndarray], targets: list[int | None]) -> tuple[np.ndarray, np.ndarray]:
        """(heatmaps [n, h, w] in 0..1 at the first trunk's input size, class probabilities [n, classes]).

        The map of the image as it is, averaged with the maps of the image moved by half a cell (SHIFTS): a 7x7
        map puts its peak on a 32 px lattice, beside an object that straddles two cells; the shifted maps
        interleave a second lattice (as "Augmented Grad-CAM", Morbidelli et al. 2020, combines maps of moved
        copies into a finer one)."""
        tensors = [torch.from_numpy(b).permute(0, 3, 1, 2).float().to(self.device) for b in batches]
        size, chosen, probabilities, heat = tuple(tensors[0].shape[2:]), targets, None, 0.0
        for shift in SHIFTS:
            moved, anchors = [], []
            for index, (trunk, images) in enumerate(zip(self.trunks, tensors)):
                start, step = self.anchor(index, trunk, images.shape[2])
                pixels = round(shift * step)
                moved.append(moved_by(images, pixels))
                anchors.append((start - pixels, step))  # the moved map's cells, on the unmoved image
            maps, logits = self.class_maps(moved, chosen)
            if probabilities is None:  # the image as it is decides the class and its probability
                chosen = [p if t is None else t for p, t in zip(logits.argmax(dim=1).tolist(), targets)]
                probabilities = torch.softmax(logits, dim=1).cpu().numpy()
            heat = heat + torch.stack([onto_input(m, a, size) for m, a in zip(maps, anchors)]).mean(dim=0)[:, 0]
        heat = heat / heat.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
        return heat.cpu().numpy().astype(np.float32), probabilities

    def class_maps(self, tensors: list[torch.Tensor],
                   targets: list[int | None]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(each trunk's Grad-CAM map [n, 1, h, w] for the target class, the logits [n, classes]); a None target
        is the predicted class."""
        with torch.enable_grad():
            leaves, pooled = zip(*(differentiable_tail(trunk, images) for trunk, images in zip(self.trunks, tensors)))
            logits = self.head(torch.cat(pooled, dim=1))
            chosen = torch.tensor([-1 if t is None else t for t in targets], device=logits.device)
            chosen = torch.where(chosen < 0, logits.argmax(dim=1), chosen)
            # each image's logit depends on its own activations only (eval mode): one backward for the batch
            gradients = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), leaves)
        return [class_activation(a.detach(), g) for a, g in zip(leaves, gradients)], logits.detach()


def moved_by(images: torch.Tensor, pixels: int) -> torch.Tensor:
    """Images [n, c, h, w] moved `pixels` down and right, the top rows and left columns repeating the edge."""
    if pixels == 0:
        return images
    height, width = images.shape[2:]
    return torch.nn.functional.pad(images, (pixels, 0, pixels, 0), mode="replicate")[:, :, :height, :width]


def save_panels(explanations: Sequence[Explanation], folder: Path) -> list[Path]:
    """One PNG per explained image in `folder` (original | overlay, label and probability below), named after the
    image (numbered when two images share a name); images that could not be read are skipped."""
    from transferlab.reports.heatmaps import png_bytes

    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for explanation in explanations:
        if explanation.error:
            continue
        stem = Path(explanation.source).stem or "image"
        path = folder / f"{stem}.png"
        if path in written:
            path = folder / f"{stem}-{len(written)}.png"
        atomic_write_bytes(path, png_bytes(explanation.panel()))
        written.append(path)
    return written


def onto_input(maps: torch.Tensor, anchor: tuple[float, float], size: tuple[int, int]) -> torch.Tensor:
    """Maps [n, 1, h, w] resampled (bilinearly) to `size`, cell i lying at input pixel `start + i * step`.

    Not a plain resize: TensorFlow's "same" padding (the EfficientNet-Lite weights) pads after, not around, so each
    stride-2 layer moves its grid half a step; at 224 px the last map sits about 16 px off a centred resize, which
    puts the heat beside small objects."""
    start, step = anchor
    height, width = maps.shape[2:]

    def axis(pixels: int, cells: int) -> torch.Tensor:  # input pixel -> the map's -1..1 coordinate (align_corners)
        position = (torch.arange(pixels, dtype=torch.float32) - start) / step
        return 2 * position / max(cells - 1, 1) - 1

    y, x = axis(size[0], height), axis(size[1], width)
    grid = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], dim=-1).to(maps.device)
    resampled = torch.nn.functional.grid_sample(maps, grid.expand(len(maps), -1, -1, -1), mode="bicubic",
                                                padding_mode="border", align_corners=True)
    return resampled.clamp_min(0)  # bicubic overshoots a little below zero beside a strong cell


def receptive_field_anchor(trunk: Trunk, side: int) -> tuple[float, float]:
    """(input pixel of map cell 0's centre, pixels per cell) of the trunk's map at `side` px, measured once: the
    centroid of the input gradient of the map's middle cell (its effective receptive field), which holds for any
    padding or architecture without reading its layers."""
    generator = torch.Generator().manual_seed(0)  # noise, not a flat grey: a flat image's last map is all zero
    probe = (torch.rand((4, 3, side, side), generator=generator) * 255).to(trunk.mean.device).requires_grad_()
    with torch.enable_grad():
        x = (probe - trunk.mean) / trunk.std
        activation = trunk.model.forward_features(x) if trunk.layer is None else trunk.model.forward_intermediates(
            x, indices=[trunk.layer], intermediates_only=True)[0]
        cells = activation.shape[-1]
        middle = cells // 2
        (gradient,) = torch.autograd.grad(activation[:, :, middle, middle].abs().sum(), probe)
    weight = gradient.abs().sum(dim=(0, 1)).sum(dim=0)  # over rows: the column profile (the map is square)
    centre = float((weight * torch.arange(side, device=weight.device)).sum() / weight.sum().clamp_min(1e-12))
    step = side / cells
    return centre - middle * step, step


def differentiable_tail(trunk: Trunk, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the trunk's last spatial activation as a leaf that needs gradients, the pooled features computed from it).
    Everything before the leaf runs without gradients."""
    with torch.no_grad():
        x = (images.float() - trunk.mean) / trunk.std
        if trunk.layer is None:
            activation = trunk.model.forward_features(x)
        else:
            (activation,) = trunk.model.forward_intermediates(x, indices=[trunk.layer], intermediates_only=True)
    if activation.ndim != 4:
        raise TransferlabError(f"explanations need a convolutional backbone; {type(trunk.model).__name__} gives "
                               f"no spatial map", hint="train with an EfficientNet-Lite or another CNN backbone")
    leaf = activation.detach().requires_grad_()
    pooled = trunk.model.forward_head(leaf, pre_logits=True) if trunk.layer is None else leaf.mean(dim=(2, 3))
    return leaf, pooled


def class_activation(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Grad-CAM's map [n, 1, h, w]: channels weighted by their mean gradient, summed, negative evidence cut."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activation).sum(dim=1, keepdim=True))

"""Keras-style model summaries: layer, type, output shape, parameters, trainable or frozen.

`summarize(model, input_size)` runs one dummy image through the model with forward hooks to learn each
layer's output shape. Hooks are written by hand rather than with torchinfo: torchinfo has had no release
since 2023, and the few lines here return plain data (for the report and tests) instead of a string.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from transferlab.backbones.registry import create_backbone, get_spec, list_specs
from transferlab.core.device import device_of
from transferlab.core.errors import TransferlabError
from transferlab.model.classifier import Classifier
from transferlab.reports.model_summary import LayerRow, Shape, Summary

TrainablePredicate = Callable[[str, nn.Parameter], bool]


def summarize(
    model: nn.Module,
    input_size: int | Sequence[int],
    *,
    depth: int = 1,
    title: str = "",
    is_trainable: TrainablePredicate | None = None,
) -> Summary:
    """Summary of `model` fed one 3×input_size×input_size image (one per size when `input_size` lists several:
    a trunk that combines backbones); `depth` levels of nesting below the top.

    `is_trainable(name, parameter)` decides the trainable column (default: `parameter.requires_grad`).
    """
    if depth < 0:
        raise TransferlabError(f"depth must be >= 0, got {depth}")
    is_trainable = is_trainable or (lambda _name, parameter: parameter.requires_grad)
    first_size = input_size if isinstance(input_size, int) else input_size[0]
    listed = list(_listed_modules(model, "", "", 0, depth))
    shapes = _output_shapes(model, input_size, [module for _, _, _, module in listed])
    rows = []
    for path, name, level, module in listed:
        params = dict(module.named_parameters(prefix=path))
        rows.append(LayerRow(
            name=name,
            type=type(module).__name__,
            level=level,
            output_shape=shapes.get(id(module)),
            params=sum(p.numel() for p in params.values()),
            trainable=sum(p.numel() for n, p in params.items() if is_trainable(n, p)),
        ))
    every = dict(model.named_parameters())
    return Summary(
        title=title or type(model).__name__,
        input_shape=(3, first_size, first_size),
        rows=rows,
        total=sum(p.numel() for p in every.values()),
        trainable=sum(p.numel() for n, p in every.items() if is_trainable(n, p)),
    )


def _listed_modules(module: nn.Module, path: str, shown: str, level: int, depth: int) -> Iterator[tuple]:
    """(module path, shown name, level, module) depth first; a lone child is looked through, not listed,
    because its row would repeat its parent's (e.g. a wrapper around the timm model)."""
    children = [(_join(path, name), name, child) for name, child in module.named_children()]
    while len(children) == 1 and next(children[0][2].children(), None) is not None:
        only_path, _, only = children[0]
        children = [(_join(only_path, name), name, child) for name, child in only.named_children()]
    for child_path, name, child in children:
        child_shown = _join(shown, name)
        yield child_path, child_shown, level, child
        if level < depth:
            yield from _listed_modules(child, child_path, child_shown, level + 1, depth)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _output_shapes(
    model: nn.Module, input_size: int | Sequence[int], modules: list[nn.Module]
) -> dict[int, Shape | list[Shape]]:
    """Output shape (batch dimension dropped) of each module the forward pass runs, by id(module)."""
    shapes: dict[int, Shape | list[Shape]] = {}

    def record(module: nn.Module, _inputs, output) -> None:
        shapes.setdefault(id(module), _shape_of(output))  # first call wins, as in Keras' first node

    handles = [module.register_forward_hook(record) for module in modules]
    was_training = model.training
    sizes = [input_size] if isinstance(input_size, int) else list(input_size)
    try:
        with torch.inference_mode():
            device = device_of(model)  # the probe goes where the model is
            model.eval()(*(torch.zeros(1, 3, size, size, device=device) for size in sizes))
    except RuntimeError as exc:
        shown = " + ".join(f"{size}×{size}" for size in sizes)
        raise TransferlabError(
            f"the model does not run on a {shown} input: {str(exc).splitlines()[0]}",
            hint="use the backbone's own input size (leave out --input-size) or one it supports",
        ) from exc
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def _shape_of(output) -> Shape | list[Shape] | None:
    if isinstance(output, torch.Tensor):
        return tuple(output.shape[1:])
    if isinstance(output, (list, tuple)):
        return [tuple(t.shape[1:]) for t in output if isinstance(t, torch.Tensor)]
    return None


def summarize_backbone(name: str, input_size: int | None = None, depth: int = 1) -> Summary:
    """A registered backbone with its ImageNet head, every layer trainable (before freezing); no weights needed."""
    spec = get_spec(name)
    size = input_size or spec.input_size
    model = create_backbone(name, pretrained=False)  # shapes and counts do not depend on the weights
    source = f" (timm {spec.timm_name})" if spec.timm_name else ""
    return summarize(model, size, depth=depth, title=f"{name}{source} at {size}×{size}")


def summarize_run(run: str | Path | Classifier, input_size: int | None = None, depth: int = 1) -> Summary:
    """A trained model: backbone trunk + head. The trunk is frozen except the tensors the run trained
    (fine-tuned blocks or a network trained from scratch save them under `backbone.` in model.safetensors)."""
    classifier = run if isinstance(run, Classifier) else Classifier.load(run)
    trained = {f"backbone.model.{name}" for name in classifier.backbone_state or {}}
    sizes = [input_size] if input_size else classifier.extractor.input_sizes
    shown = " + ".join(f"{size}×{size}" for size in sizes)
    return summarize(
        classifier.network(),
        sizes,
        depth=depth,
        title=f"{classifier.backbone} + {classifier.head_config.kind} head ({classifier.strategy}) at {shown}",
        is_trainable=lambda name, _parameter: name.startswith("head.") or name in trained,
    )


def summary_of(target: str | Path | Classifier, input_size: int | None = None, depth: int = 1) -> Summary:
    """`target` is a Classifier, a run folder (it holds model.json) or a backbone name."""
    if isinstance(target, Classifier) or Path(target).is_dir():
        return summarize_run(target, input_size, depth)
    if str(target) not in {spec.name for spec in list_specs()}:
        raise TransferlabError(
            f"{str(target)!r} is neither a run folder nor a backbone",
            hint=f"pass a folder written by `transferlab train`, or one of: {', '.join(s.name for s in list_specs())}",
        )
    return summarize_backbone(str(target), input_size, depth)


__all__ = ["LayerRow", "Summary", "summarize", "summarize_backbone", "summarize_run", "summary_of"]

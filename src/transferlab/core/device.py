"""Where networks run: the device asked for, resolved once, and the rule for moving modules there.

A module at rest lives on the CPU: an extractor's memoised trunk, a classifier's head and `network()`, whatever
the summary or the ONNX export is given. Whoever runs one on another device works on its own copy
(`device_copy`, for as long as a runtime lives) or moves it there and back (`on_device`, for one call); a module
shared by several users is never left moved under the others (a GPU run once ended in the model summary, which
fed CPU zeros to a trunk the torch runtime had moved to cuda in place). Inputs follow the module (`device_of`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import chain

import torch

from transferlab.core.errors import TransferlabError


def cuda_available() -> bool:
    """The one question asked of the machine (tests simulate a GPU by answering it)."""
    return torch.cuda.is_available()


def resolve_device(device: str = "auto") -> str:
    """'auto' means CUDA when a GPU is present, else CPU."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device.startswith("cuda") and not cuda_available():
        raise TransferlabError(f"device {device!r} requested but no CUDA GPU is available", hint="use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise TransferlabError(f"unknown device {device!r}", hint="use auto, cpu or cuda")
    return device


def device_of(module: torch.nn.Module) -> torch.device:
    """Where the module's tensors are (the CPU for a module without any)."""
    tensor = next(chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def is_on(module: torch.nn.Module, device: str | torch.device) -> bool:
    """Whether the module is on `device` ("cuda" matches cuda:0 and any other index)."""
    where, wanted = device_of(module), torch.device(device)
    return where.type == wanted.type and wanted.index in (None, where.index)


def device_copy(module: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """The module itself when it is on `device` already, else a copy there; the module stays where it was."""
    return module if is_on(module, device) else copy.deepcopy(module).to(device)


@contextmanager
def on_device(module: torch.nn.Module, device: str | torch.device) -> Iterator[torch.nn.Module]:
    """The module on `device` in inference mode for the duration of the block, then back where it was, in the
    mode it was in."""
    where, training = device_of(module), module.training
    try:
        yield module.to(device).eval()
    finally:
        module.to(where).train(training)

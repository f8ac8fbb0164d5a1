"""A simulated CUDA device for machines without one, so that CI (no GPU) guards the GPU path.

Under `simulated_gpu()`, transferlab sees a GPU (`devices.cuda_available()`) and whatever is moved to "cuda" (`tensor.to`,
`.cuda()`, `module.to`, a factory's `device=`) stays in CPU memory but is marked as living on cuda:0: its
`.device` says so, `.numpy()` refuses it, and every torch call that mixes marked and unmarked tensors raises
PyTorch's own "Expected all tensors to be on the same device" error, as a real GPU does. Values are computed as
usual, so whole runs (training, metrics, export) go through; what differs from a real GPU is only what placement
bugs show up as errors. Zero-dimensional tensors may mix (CUDA takes CPU scalars), and so may the transfers
themselves (`to`, `copy_`, `param.data = ...`) and indexing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode

MARK = "_simulated_cuda"
CUDA = torch.device("cuda", 0)
TensorBase = torch._C.TensorBase
# calls whose tensors may live on different devices: transfers, and indexing with CPU indices
MIXING = {TensorBase.copy_, torch.Tensor.__getitem__, torch.Tensor.__setitem__, TensorBase.__getitem__,
          TensorBase.__setitem__, torch._has_compatible_shallow_copy_type}


def on_gpu(tensor) -> bool:
    return isinstance(tensor, torch.Tensor) and getattr(tensor, MARK, False)


def _mark(tensor: torch.Tensor, on: bool) -> torch.Tensor:
    if on:
        setattr(tensor, MARK, True)
    elif hasattr(tensor, MARK):
        delattr(tensor, MARK)
    return tensor


def _descriptor(func, name: str, action: str) -> bool:
    """Whether `func` is the getter/setter `action` of the tensor attribute `name` (e.g. `.device`)."""
    return getattr(func, "__name__", None) == action and getattr(func, "__self__", None) is getattr(TensorBase, name, 0)


def _target(func, args, kwargs) -> torch.device | None:
    """The device a transfer or a factory asks for; None for any other call."""
    if func in (TensorBase.to, torch.Tensor.to):
        device, *_ = torch._C._nn._parse_to(*args[1:], **kwargs)
        return device
    if func is TensorBase.cuda:
        return CUDA
    if func is TensorBase.cpu:
        return torch.device("cpu")
    device = kwargs.get("device")
    return torch.device(device) if device is not None else None


def _without_device(func, args, kwargs):
    """The call with its CUDA target removed (the data stays in CPU memory)."""
    if func is TensorBase.cuda:
        return TensorBase.to, (args[0],), {"non_blocking": kwargs.get("non_blocking", False)}
    if func in (TensorBase.to, torch.Tensor.to):
        _, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args[1:], **kwargs)
        kept = {"dtype": dtype, "non_blocking": non_blocking, "memory_format": memory_format}
        return TensorBase.to, (args[0],), {k: v for k, v in kept.items() if v is not None}
    return func, args, {**kwargs, "device": "cpu"}


def _tensors(value) -> Iterator[torch.Tensor]:
    """The tensors in a call's arguments or results, in lists and tuples (not in dicts: deepcopy's memo is one)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _marked(result, on: bool = True):
    for tensor in _tensors(result):
        _mark(tensor, on)
    return result


def _check_one_device(func, args, kwargs) -> bool:
    """Whether the call's tensors are on the simulated GPU (True) or the CPU (False); raises if they mix."""
    tensors = list(_tensors((args, tuple(kwargs.values()))))
    devices = {on_gpu(t) for t in tensors if t.dim() > 0 or on_gpu(t)}
    if len(devices) > 1 and func not in MIXING:
        name = getattr(func, "__qualname__", repr(func))
        raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                           f"cuda:0 and cpu! (simulated GPU, in {name})")
    return any(on_gpu(t) for t in tensors)


class SimulatedGPU(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _descriptor(func, "device", "__get__"):
            return CUDA if on_gpu(args[0]) else func(*args)
        if _descriptor(func, "is_cuda", "__get__"):
            return on_gpu(args[0])
        if _descriptor(func, "data", "__set__"):  # `param.data = t`: the parameter moves to where t is
            func(*args)
            _mark(args[0], on_gpu(args[1]))
            return None
        if func in (TensorBase.numpy, torch.Tensor.__array__) and on_gpu(args[0]):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the "
                            "tensor to host memory first. (simulated GPU)")
        target = _target(func, args, kwargs)
        if target is not None and target.type == "cuda":
            func, args, kwargs = _without_device(func, args, kwargs)
            result = func(*args, **kwargs)
            if args and result is args[0] and not on_gpu(result):
                result = result.clone()  # a transfer makes a new tensor; the CPU original stays unmarked
            return _marked(result)
        if target is not None and target.type == "cpu" and args and on_gpu(args[0]):
            return _marked(func(*args, **kwargs).clone(), on=False)
        gpu = _check_one_device(func, args, kwargs)
        result = func(*args, **kwargs)
        return _marked(result) if gpu else result


def _deepcopy_parameter(original):
    """Parameter.__deepcopy__ builds a new Parameter from the data: it keeps the mark, as a copy stays on its GPU."""

    def deepcopy(self, memo):
        result = original(self, memo)
        return _mark(result, on_gpu(self))

    return deepcopy


@contextlib.contextmanager
def simulated_gpu() -> Iterator[None]:
    # transferlab's question only: torch's own internals (optimizers' graph-capture checks) would call into CUDA
    with mock.patch("transferlab.core.device.cuda_available", lambda: True), \
            mock.patch.object(torch.nn.Parameter, "__deepcopy__", _deepcopy_parameter(torch.nn.Parameter.__deepcopy__)), \
            SimulatedGPU():
        yield

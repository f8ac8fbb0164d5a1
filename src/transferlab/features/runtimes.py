"""Runtimes: what runs a frozen trunk over a batch of images (uint8 NCHW in, features out).

Two ship: ONNX Runtime (the CPU default: 2-4x faster than eager PyTorch on a small CPU) and PyTorch (CUDA, or
any device). A runtime is built from a `TrunkSource` by a factory in the `RUNTIMES` table; adding one is a
class with a `run` method and one `register_runtime` call (a distributed engine plugs in the same way).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from transferlab.core.config import INT8_STRATEGIES, PRECISIONS
from transferlab.core.errors import TransferlabError, warn
from transferlab.core.files import atomic_write_bytes, file_digest


@dataclass
class TrunkSource:
    """What a runtime may build itself from: the trunk (built on first call), where its ONNX form lives, the
    input size and the device; with precision "int8", where the quantised form lives and the calibration
    batches (uint8 NCHW, preprocessed as extraction does) it is made from when it is not there yet."""

    trunk: Callable[[], Any]  # () -> the Trunk module (torch is imported only by the runtimes that need it)
    onnx_path: Path
    input_size: int
    device: str
    precision: str = "float32"
    quantized_path: Path | None = None
    calibration: Callable[[], Iterable[np.ndarray]] | None = None

class Runtime(Protocol):
    def run(self, images: np.ndarray) -> np.ndarray:
        """uint8 [n, 3, h, w] -> features [n, ...] (float32 or float16)."""

class OnnxRuntime:
    """The trunk exported once to ONNX (cached beside the features), run by ONNX Runtime on the CPU; with
    precision "int8", its static int8 quantisation, made once from calibration images and cached beside it."""

    supports_int8 = True

    def __init__(self, source: TrunkSource, session=None):
        """`session`: one already built (a Ray actor builds its own from the exported file's bytes)."""
        self.source = source
        self._session = session
        self.calibrated = False  # whether this runtime quantised the trunk (rather than finding it cached)

    def session(self):
        if self._session is None:
            import onnxruntime as ort

            path = self.source.onnx_path
            if not verified(path):
                self.export(path)
            if self.source.precision == "int8":
                path = self.quantized()
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = os.cpu_count() or 1
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return self._session

    def export(self, path: Path) -> None:
        """Export the trunk and record the file's digest beside it, so that a damaged copy is noticed."""
        from transferlab.backbones.trunk import export_onnx

        if path.exists():
            warn(f"the cached trunk {path.name} is damaged or unverified; exporting it again")
        export_onnx(self.source.trunk(), self.source.input_size, path)
        atomic_write_bytes(digest_path(path), file_digest(path).encode())

    def quantized(self) -> Path:
        """The cached int8 trunk, quantised now if absent or damaged (digest recorded as for the float one)."""
        from transferlab.features.quantize import quantize_int8

        path = self.source.quantized_path
        if path is None or self.source.calibration is None:
            raise TransferlabError("an int8 trunk needs a quantised path and calibration images")
        if not verified(path):
            if path.exists():
                warn(f"the cached int8 trunk {path.name} is damaged or unverified; quantising it again")
            batches = ({"images": batch} for batch in self.source.calibration())
            quantize_int8(self.source.onnx_path, path, batches)
            atomic_write_bytes(digest_path(path), file_digest(path).encode())
            self.calibrated = True
        return path

    def run(self, images: np.ndarray) -> np.ndarray:
        return self.session().run(None, {"images": images})[0]

def digest_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".blake2b")

def verified(onnx_path: Path) -> bool:
    """Whether the cached ONNX file exists and still has the digest recorded when it was exported."""
    record = digest_path(onnx_path)
    return onnx_path.is_file() and record.is_file() and record.read_text().strip() == file_digest(onnx_path)

class TorchRuntime:
    """The trunk in PyTorch on the source's device: its own copy there, so the trunk it was given stays on the CPU
    for the summary, the export and anyone else holding it (see `transferlab.core.device`)."""

    def __init__(self, source: TrunkSource):
        self.source = source
        self._trunk = None

    def run(self, images: np.ndarray) -> np.ndarray:
        import torch

        from transferlab.core.device import device_copy

        if self._trunk is None:
            self._trunk = device_copy(self.source.trunk(), self.source.device).eval()
        with torch.inference_mode():
            batch = torch.from_numpy(images).to(self.source.device, non_blocking=True)
            return self._trunk(batch).float().cpu().numpy()

RuntimeFactory = Callable[[TrunkSource], Runtime]
RUNTIMES: dict[str, RuntimeFactory] = {"onnx": OnnxRuntime, "torch": TorchRuntime}

def register_runtime(name: str, factory: RuntimeFactory) -> None:
    """Make `name` a valid runtime choice (a name already there is replaced)."""
    RUNTIMES[name] = factory

def resolve_runtime(runtime: str, device: str) -> str:
    """'auto' means ONNX Runtime on a CPU (2-4x faster here) and PyTorch on CUDA."""
    if runtime == "auto":
        return "onnx" if device == "cpu" else "torch"
    if runtime == "onnx" and device != "cpu":
        raise TransferlabError("the ONNX Runtime path runs on the CPU only", hint="use --runtime torch with a GPU")
    if runtime not in RUNTIMES:
        raise TransferlabError(f"unknown runtime {runtime!r}", hint=f"choose one of: auto, {', '.join(RUNTIMES)}")
    return runtime

def resolve_precision(precision: str, runtime: str, int8_default: bool) -> str:
    """'auto' means int8 where it is measured to cost at most 0.3 points (`int8_default`) and the runtime is
    ONNX Runtime, else float32; int8 needs a runtime that can run it (ONNX Runtime)."""
    if precision == "auto":
        return "int8" if int8_default and supports_int8(runtime) else "float32"
    return check_precision(precision, runtime)

def supports_int8(runtime: str) -> bool:
    return bool(getattr(RUNTIMES.get(runtime), "supports_int8", False))

def check_runtime(runtime: str) -> str:
    if runtime != "auto" and runtime not in RUNTIMES:
        raise TransferlabError(f"unknown runtime {runtime!r}", hint=f"choose one of: auto, {', '.join(RUNTIMES)}")
    return runtime

def check_precision(precision: str, runtime: str = "auto", strategy: str = "extract") -> str:
    """float32 | int8 | auto; int8 needs ONNX Runtime (the CPU runtime) and a strategy with a frozen trunk."""
    if precision not in PRECISIONS:
        raise TransferlabError(f"unknown precision {precision!r}", hint=f"choose one of: {', '.join(PRECISIONS)}")
    if precision == "int8" and runtime != "auto" and runtime in RUNTIMES and not supports_int8(runtime):
        raise TransferlabError(
            f"--precision int8 runs on ONNX Runtime only, not on the {runtime} runtime",
            hint="use --runtime onnx (on a CPU), or --precision float32",
        )
    if precision == "int8" and strategy not in INT8_STRATEGIES:
        raise TransferlabError(
            f"--precision int8 quantises the frozen trunk of {' and '.join(INT8_STRATEGIES)}, not strategy {strategy!r}",
            hint="drop --precision, or use --strategy extract",
        )
    return precision

def make_runtime(runtime: str, source: TrunkSource) -> Runtime:
    return RUNTIMES[resolve_runtime(runtime, source.device)](source)

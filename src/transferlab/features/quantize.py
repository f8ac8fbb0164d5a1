"""int8 static quantisation of ONNX graphs (ONNX Runtime, QDQ format, per-channel weights), calibrated on images.

One function serves the frozen trunk of `--precision int8` (runtimes) and the exported classifier of
`transferlab export --quantize int8`. Torch-free: it needs only onnx and onnxruntime.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_path

Feeds = dict[str, np.ndarray]


def shape_arithmetic_nodes(model) -> list[str]:
    """Nodes that compute shapes, not activations: Shape and everything fed only by shapes and constants.

    TF-style "same" padding (the tf_efficientnet_lite* backbones) exports as Shape -> Gather -> Sub/Mul/Div ->
    Pad. Quantising that float arithmetic rounds the pad amounts, so feature maps come out a pixel smaller
    (measured on lite0: cosine to the float features 0.91; with these nodes kept in float 0.99).
    """
    constants = {tensor.name for tensor in model.graph.initializer}
    derived: set[str] = set()
    names: list[str] = []
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        live = [name for name in node.input if name and name not in constants]
        if node.op_type in ("Shape", "Constant") or (live and all(name in derived for name in live)):
            names.append(node.name)
            derived.update(node.output)
    return names


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an iterable of feeds."""

    def __init__(self, feeds: Iterable[Feeds]):
        self._feeds: Iterator[Feeds] = iter(feeds)
        self.count = 0

    def get_next(self) -> Feeds | None:
        feeds = next(self._feeds, None)
        if feeds is not None:
            self.count += len(next(iter(feeds.values())))
        return feeds


def quantize_int8(float_path: Path, out_path: Path, calibration: Iterable[Feeds]) -> int:
    """Write the static int8 QDQ form of `float_path` to `out_path` (atomically); returns the number of
    calibration images read.

    Per-channel int8 weights and uint8 activations with MinMax ranges: the int8 kernels convnets gain most from on
    a CPU. Shape arithmetic stays in float (see `shape_arithmetic_nodes`).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    feeds = iter(calibration)
    first = next(feeds, None)
    if first is None:
        raise TransferlabError("no calibration image could be read for int8 quantisation",
                               hint="check the training images, or use --precision float32")
    reader = _Reader(itertools.chain([first], feeds))
    with tempfile.TemporaryDirectory(dir=out_path.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared))  # shape inference + folding, as ORT recommends
        with atomic_path(out_path, float_path.stat().st_size // 3) as tmp:
            quantize_static(
                str(prepared), str(tmp), reader,
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=shape_arithmetic_nodes(onnx.load(str(prepared))),
            )
    return reader.count

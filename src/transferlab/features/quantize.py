"""int8 static quantisation of ONNX graphs (ONNX Runtime, QDQ format, per-channel weights), calibrated on images.

One function serves the frozen trunk of `--precision int8` (runtimes) and the exported classifier of
`transferlab export --quantize int8`. Torch-free: it needs only onnx and onnxruntime.
"""

from __future__ import annotations

import itertools
import platform
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_path

Feeds = dict[str, np.ndarray]

# The settings int8 graphs are made with. They are part of the int8 trunk's cache key and of model.json, so that a
# trunk made with other settings is never taken for one of these. LEGACY_SETTINGS: those before 2026-12-04, 8-bit
# weights everywhere, which saturate on x86 CPUs without VNNI (see `quantize_int8`).
SETTINGS = "qdq-u8s8-per-channel-minmax-7bit-gemm"
LEGACY_SETTINGS = "qdq-u8s8-per-channel-minmax"
DESCRIPTION = ("static QDQ, uint8 activations, per-channel int8 weights (7-bit in matrix products, 8-bit in "
               "depthwise convolutions), MinMax")
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


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


def depthwise_weights(model) -> list[str]:
    """Weights of depthwise convolutions (one input and one output channel per group). ONNX Runtime runs these
    with its own kernel, which multiplies in 32 bits: 8-bit weights are exact there on every CPU."""
    shapes = {tensor.name: tensor.dims for tensor in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] not in shapes:
            continue
        group = next((attribute.i for attribute in node.attribute if attribute.name == "group"), 1)
        out_channels, in_per_group = shapes[node.input[1]][:2]
        if group > 1 and out_channels == group and in_per_group == 1:
            names.append(node.input[1])
    return names


def saturates_8bit_weights_here() -> bool:
    """Whether this CPU may multiply uint8 by int8 in int16 pair sums (x86 without VNNI), where the 8-bit weights
    of LEGACY_SETTINGS saturate. Read from /proc/cpuinfo where there is one; any other x86 CPU is assumed to."""
    if platform.machine().lower() not in X86:
        return False
    try:
        return "vnni" not in Path("/proc/cpuinfo").read_text()
    except OSError:
        return True


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

    Per-channel int8 weights and uint8 activations with MinMax ranges (SETTINGS): the int8 kernels convnets gain
    most from on a CPU. x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) multiply uint8 by int8 with VPMADDUBSW,
    which adds each pair of products in int16 and saturates (255 * 127 * 2 > 32767): with 8-bit weights lite0's
    features had a cosine of 0.92 to the float ones on such a CPU (0.995 where nothing saturates). So the weights
    of every matrix product get 7 bits (255 * 64 * 2 < 32767; ONNX Runtime's `reduce_range`), on every CPU, since
    a graph may run on another CPU than the one that made it: cosine 0.984. Depthwise convolutions keep 8 bits
    (see `depthwise_weights`; 7 bits there too: 0.977). Shape arithmetic stays in float (`shape_arithmetic_nodes`).
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
        model = onnx.load(str(prepared))
        # "axis" kept: an override without it makes the weight per-tensor (onnxruntime 1.32)
        eight_bits = {name: [{"axis": 0, "reduce_range": False}] for name in depthwise_weights(model)}
        with atomic_path(out_path, float_path.stat().st_size // 3) as tmp:
            quantize_static(
                str(prepared), str(tmp), reader,
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=shape_arithmetic_nodes(model),
                extra_options={"TensorQuantOverrides": eight_bits},
            )
    return reader.count

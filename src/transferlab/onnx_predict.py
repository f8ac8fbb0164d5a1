"""Prediction with an exported model (model.onnx + model.onnx.json): ONNX Runtime, numpy and Pillow only.

Nothing here imports torch or timm, so a deployment needs only `onnxruntime numpy pillow`. The exported
model takes uint8 RGB images [N, 3, H, W] at its input size and returns class probabilities [N, C]
(normalisation and softmax are inside the graph); this module decodes, resizes and centre-crops exactly
like `backbones.preprocess` (shorter side to resize_size with the backbone's interpolation, then the crop).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

from transferlab.errors import TransferlabError
from transferlab.prediction import Prediction

ONNX_FORMAT = "transferlab-onnx/1"
MODEL_FILE = "model.onnx"
BATCH_SIZE = 32

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

ImageSource = str | Path | bytes | Image.Image


def metadata_path(onnx_path: Path) -> Path:
    """model.onnx -> model.onnx.json (the labels and preprocessing that go with the graph)."""
    return onnx_path.with_name(onnx_path.name + ".json")


def resolve_model(source: str | Path) -> Path:
    """A run folder (-> RUN/model.onnx) or an .onnx file; raise a TransferlabError if it is neither."""
    path = Path(source)
    onnx_path = path / MODEL_FILE if path.is_dir() else path
    if not onnx_path.is_file():
        raise TransferlabError(
            f"no exported model at {onnx_path}",
            hint=f"run `transferlab export {path} --format onnx` first",
        )
    if not metadata_path(onnx_path).is_file():
        raise TransferlabError(
            f"{metadata_path(onnx_path).name} is missing beside {onnx_path}",
            hint="re-run `transferlab export`: the .json file holds the labels and the preprocessing",
        )
    return onnx_path


class OnnxClassifier:
    """An exported classifier. `OnnxClassifier("runs/x").predict(["a.jpg"], top_k=3)`.

    Safe to share between threads: ONNX Runtime sessions allow concurrent `run` calls.
    """

    def __init__(self, source: str | Path, *, threads: int | None = None):
        self.path = resolve_model(source)
        self.metadata: dict = json.loads(metadata_path(self.path).read_text())
        if self.metadata.get("format") != ONNX_FORMAT:
            raise TransferlabError(f"unsupported export format {self.metadata.get('format')!r} in {self.path}")
        self.classes: list[str] = list(self.metadata["labels"])
        preprocessing = self.metadata["preprocessing"]
        self.input_size: int = preprocessing["input_size"]
        self.resize_size: int = preprocessing["resize_size"]
        self.resample = _RESAMPLING[preprocessing["interpolation"]]
        self.session = make_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __repr__(self) -> str:
        return f"OnnxClassifier({str(self.path)!r}, classes={len(self.classes)})"

    # -- images -----------------------------------------------------------------------------------
    def decode(self, source: ImageSource) -> Image.Image:
        """RGB image with EXIF orientation applied; JPEGs decoded at reduced scale like the training pipeline."""
        if isinstance(source, Image.Image):
            return source
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (self.resize_size, self.resize_size))
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
        except FileNotFoundError:
            raise TransferlabError(f"no such image file: {source}") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # what PIL raises on bad bytes
            raise TransferlabError(f"cannot decode image: {exc}"[:160]) from exc

    def prepare(self, source: ImageSource) -> np.ndarray:
        """uint8 [3, input_size, input_size]: shorter side resized to resize_size, then centre-cropped.

        Written out (not torchvision) to stay torch-free; same sizes and rounding as v2.Resize + CenterCrop.
        """
        image = self.decode(source).convert("RGB")
        width, height = image.size
        size = (self.resize_size, int(self.resize_size * height / width)) if width <= height else (
            int(self.resize_size * width / height), self.resize_size)
        if (width, height) != size:
            image = image.resize(size, resample=self.resample)
        left = int(round((size[0] - self.input_size) / 2.0))
        top = int(round((size[1] - self.input_size) / 2.0))
        image = image.crop((left, top, left + self.input_size, top + self.input_size))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    # -- prediction -------------------------------------------------------------------------------
    def run(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [n, 3, H, W] -> probabilities float32 [n, n_classes], in batches of BATCH_SIZE."""
        parts = [self.session.run(None, {self.input_name: batch[i : i + BATCH_SIZE]})[0]
                 for i in range(0, len(batch), BATCH_SIZE)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)

    def predict_proba(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Probabilities [n, n_classes]; raises TransferlabError if any image cannot be decoded."""
        return self.run(np.stack([self.prepare(image) for image in images]))

    def predict(self, images: Sequence[ImageSource], top_k: int = 5) -> list[Prediction]:
        """Top-k (label, probability) per image; an image that fails to decode gets `.error` instead."""
        prepared: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for image in images:
            try:
                prepared.append(self.prepare(image))
                errors.append(None)
            except TransferlabError as exc:
                prepared.append(None)
                errors.append(exc.message)
        ok = [array for array in prepared if array is not None]
        rows = iter(self.run(np.stack(ok)) if ok else [])
        return [
            Prediction(_source_name(image), [] if error else self.top_k(next(rows), top_k), error)
            for image, error in zip(images, errors)
        ]

    def top_k(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
        order = np.argsort(probabilities)[::-1][: max(1, min(k, len(self.classes)))]
        return [(self.classes[i], float(probabilities[i])) for i in order]


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _to_rgb(image: Image.Image) -> Image.Image:
    """Transparent pixels over white, like data.open_image (not imported: it pulls in scikit-learn and rich)."""
    if image.mode != "RGB" and image.has_transparency_data:
        white = Image.new("RGBA", image.size, "white")
        return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _source_name(image: ImageSource) -> str:
    return str(image) if isinstance(image, (str, Path)) else "<image>"

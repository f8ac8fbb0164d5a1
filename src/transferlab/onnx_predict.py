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
from dataclasses import dataclass
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


@dataclass(frozen=True)
class GraphInput:
    """One image input of an exported graph and how to prepare images for it."""

    name: str
    input_size: int
    resize_size: int
    resample: Image.Resampling

    @classmethod
    def of(cls, name: str, preprocessing: dict) -> GraphInput:
        return cls(name, preprocessing["input_size"], preprocessing["resize_size"],
                   _RESAMPLING[preprocessing["interpolation"]])

    def prepare(self, image: Image.Image) -> np.ndarray:
        """uint8 [3, input_size, input_size]: shorter side resized to resize_size, then centre-cropped.

        Written out (not torchvision) to stay torch-free; same sizes and rounding as v2.Resize + CenterCrop.
        """
        width, height = image.size
        size = (self.resize_size, int(self.resize_size * height / width)) if width <= height else (
            int(self.resize_size * width / height), self.resize_size)
        if (width, height) != size:
            image = image.resize(size, resample=self.resample)
        left = int(round((size[0] - self.input_size) / 2.0))
        top = int(round((size[1] - self.input_size) / 2.0))
        image = image.crop((left, top, left + self.input_size, top + self.input_size))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


Batch = np.ndarray | Sequence[np.ndarray]  # one uint8 [n, 3, H, W] array per graph input


class OnnxClassifier:
    """An exported classifier. `OnnxClassifier("runs/x").predict(["a.jpg"], top_k=3)`.

    Safe to share between threads: ONNX Runtime sessions allow concurrent `run` calls. A model that combines
    backbones takes one image input per backbone, each prepared at its own size.
    """

    def __init__(self, source: str | Path, *, threads: int | None = None):
        self.path = resolve_model(source)
        self.metadata: dict = json.loads(metadata_path(self.path).read_text())
        if self.metadata.get("format") != ONNX_FORMAT:
            raise TransferlabError(f"unsupported export format {self.metadata.get('format')!r} in {self.path}")
        self.classes: list[str] = list(self.metadata["labels"])
        described = self.metadata.get("inputs") or [{"name": "images", "preprocessing": self.metadata["preprocessing"]}]
        self.inputs = [GraphInput.of(entry["name"], entry["preprocessing"]) for entry in described]
        self.input_size: int = self.inputs[0].input_size
        self.resize_size: int = max(graph_input.resize_size for graph_input in self.inputs)
        self.session = make_session(self.path, threads)

    def __repr__(self) -> str:
        return f"OnnxClassifier({str(self.path)!r}, classes={len(self.classes)})"

    # -- images -----------------------------------------------------------------------------------
    def decode(self, source: ImageSource, resize_size: int | None = None) -> Image.Image:
        """RGB image with EXIF orientation applied; JPEGs decoded at reduced scale (for `resize_size`, default the
        largest input's) like the training pipeline."""
        if isinstance(source, Image.Image):
            return source
        draft = resize_size or self.resize_size
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                if image.format == "JPEG":
                    image.draft("RGB", (draft, draft))
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
        except FileNotFoundError:
            raise TransferlabError(f"no such image file: {source}") from None
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # what PIL raises on bad bytes
            raise TransferlabError(f"cannot decode image: {exc}"[:160]) from exc

    def prepare_inputs(self, source: ImageSource) -> list[np.ndarray]:
        """The image prepared for every graph input, each decoded at its own reduced JPEG scale as training did."""
        return [graph_input.prepare(self.decode(source, graph_input.resize_size).convert("RGB"))
                for graph_input in self.inputs]

    def prepare(self, source: ImageSource) -> np.ndarray:
        """uint8 [3, input_size, input_size] for a one-input graph (see `prepare_inputs` for several)."""
        return self.prepare_inputs(source)[0]

    def stack(self, prepared: Sequence[list[np.ndarray]]) -> list[np.ndarray]:
        """Per-image lists of prepared inputs -> one batch per graph input."""
        return [np.stack(column) for column in zip(*prepared)]

    # -- prediction -------------------------------------------------------------------------------
    def feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        arrays = [batch] if isinstance(batch, np.ndarray) else list(batch)
        return {graph_input.name: array for graph_input, array in zip(self.inputs, arrays, strict=True)}

    def run(self, batch: Batch) -> np.ndarray:
        """uint8 [n, 3, H, W] (one array per graph input) -> probabilities float32 [n, n_classes], in batches of
        BATCH_SIZE."""
        feeds = self.feeds(batch)
        n = len(next(iter(feeds.values())))
        parts = [self.session.run(None, {name: array[i : i + BATCH_SIZE] for name, array in feeds.items()})[0]
                 for i in range(0, n, BATCH_SIZE)]
        return np.concatenate(parts) if parts else np.zeros((0, len(self.classes)), np.float32)

    def predict_proba(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Probabilities [n, n_classes]; raises TransferlabError if any image cannot be decoded."""
        return self.run(self.stack([self.prepare_inputs(image) for image in images]))

    def predict(self, images: Sequence[ImageSource], top_k: int = 5) -> list[Prediction]:
        """Top-k (label, probability) per image; an image that fails to decode gets `.error` instead."""
        prepared: list[list[np.ndarray]] = []
        errors: list[str | None] = []
        for image in images:
            try:
                prepared.append(self.prepare_inputs(image))
                errors.append(None)
            except TransferlabError as exc:
                errors.append(exc.message)
        rows = iter(self.run(self.stack(prepared)) if prepared else [])
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

"""Prediction with an exported model (model.onnx + model.onnx.json): ONNX Runtime, numpy and Pillow only.

Nothing here imports torch or timm, so a deployment needs only `onnxruntime numpy pillow`. The exported
model takes uint8 RGB images [N, 3, H, W] at its input size and returns class probabilities [N, C]
(normalisation and softmax are inside the graph); images are decoded, resized and centre-cropped by the same
functions as in training (`transferlab.data.decoding`, itself torch-free).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from transferlab.core.errors import TransferlabError
from transferlab.core.run_folder import check_class_count
from transferlab.data.decoding import open_image, resize_and_crop
from transferlab.model.prediction import (
    ImageInput,
    ImageLike,
    Prediction,
    checked_probabilities,
    image_inputs,
    predictions_of,
)

ONNX_FORMAT = "transferlab-onnx/1"
MODEL_FILE = "model.onnx"
BATCH_SIZE = 32


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
    interpolation: str

    @classmethod
    def of(cls, name: str, preprocessing: dict) -> GraphInput:
        return cls(name, preprocessing["input_size"], preprocessing["resize_size"], preprocessing["interpolation"])

    def prepare(self, image: Image.Image) -> np.ndarray:
        """uint8 [3, input_size, input_size], exactly as training prepared its images."""
        pixels = resize_and_crop(image, self.resize_size, self.input_size, self.interpolation)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))


Batch = np.ndarray | Sequence[np.ndarray]  # one uint8 [n, 3, H, W] array per graph input


def explanations_need_torch() -> TransferlabError:
    """Heatmaps need gradients inside the network, which the exported graph does not give."""
    return TransferlabError("explanations (heatmaps) need the PyTorch model; the ONNX model only predicts",
                            hint="use the run folder with --model torch, or transferlab.load(run), with torch installed")


class OnnxClassifier:
    """An exported classifier. `OnnxClassifier("runs/x").predict(["a.jpg"], top_k=3)`.

    Safe to share between threads: ONNX Runtime sessions allow concurrent `run` calls. A model that combines
    backbones takes one image input per backbone, each prepared at its own size.
    """

    def explain(self, *_, **__):
        raise explanations_need_torch()

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
        outputs = self.session.get_outputs()[0].shape[-1]  # a name where the export left the size open
        check_class_count(self.path.parent, {metadata_path(self.path).name: self.classes}, self.path.name,
                          outputs if isinstance(outputs, int) else None)

    def __repr__(self) -> str:
        return f"OnnxClassifier({str(self.path)!r}, classes={len(self.classes)})"

    # -- images -----------------------------------------------------------------------------------
    def decode(self, source: ImageSource, resize_size: int | None = None) -> Image.Image:
        """RGB image, decoded exactly as training decoded it (`decoding.open_image`: EXIF orientation, 16-bit and
        float images scaled, the same size limits), JPEGs at reduced scale for `resize_size` (default: the largest
        input's)."""
        if isinstance(source, Image.Image):
            return source
        draft = resize_size or self.resize_size
        return open_image(source, draft_size=(draft, draft))

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

    def probabilities(self, inputs: Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        """(probabilities [n_ok, n_classes] of the usable inputs in order, kept [n], {name: reason} for the others)."""
        prepared: list[list[np.ndarray]] = []
        kept = np.zeros(len(inputs), dtype=bool)
        failed: dict[str, str] = {}
        for index, item in enumerate(inputs):
            try:
                if item.error:
                    raise TransferlabError(item.error)
                prepared.append(self.prepare_inputs(item.value))
                kept[index] = True
            except TransferlabError as exc:
                failed[item.name] = exc.message
            except (OSError, ValueError) as exc:  # a user's lazily opened PIL image whose file is damaged
                failed[item.name] = f"{type(exc).__name__}: {exc}"[:160]
        probs = self.run(self.stack(prepared)) if prepared else np.zeros((0, len(self.classes)), np.float32)
        return probs, kept, failed

    def predict_proba(self, images: ImageLike | Sequence[ImageLike], *, return_failed: bool = False):
        """Probabilities [n, n_classes], as `Classifier.predict_proba`: an image that cannot be used raises
        TransferlabError, unless `return_failed=True` gives (probabilities of the others, {name: reason})."""
        probs, _, failed = self.probabilities(image_inputs(images))
        return checked_probabilities(probs, failed, return_failed)

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5) -> list[Prediction]:
        """Top-k (label, probability) per image, always a list in input order; an image that cannot be used gets
        `.error` instead."""
        inputs = image_inputs(images)
        probs, kept, failed = self.probabilities(inputs)
        return predictions_of(inputs, probs, kept, failed, lambda row: self.top_k(row, top_k))

    def top_k(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
        order = np.argsort(probabilities)[::-1][: max(1, min(k, len(self.classes)))]
        return [(self.classes[i], float(probabilities[i])) for i in order]


def make_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

"""What the torch classifier and the torch-free ONNX predictor share: the prediction record, the inputs both
accept (paths, folders, numpy arrays, bytes, PIL images) and prediction with a progress bar.

Torch-free (numpy, Pillow, rich), so that the ONNX predictor and the CLI's argument checks stay light.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from transferlab.core.errors import TransferlabError
from transferlab.core.progress import make_progress
from transferlab.data.layouts import folder_images

# What `predict` and `predict_proba` accept: one of these or a list of them. A folder stands for the image files
# inside it (recursively, sorted, linked folders followed as `train` follows them); a 4-d array for a batch of
# HxWxC images.
ImageLike = str | Path | bytes | Image.Image | np.ndarray
PROGRESS_CHUNK = 64  # images per progress-bar step: large enough to keep the runtime's batches full
PROGRESS_THRESHOLD = 2 * PROGRESS_CHUNK  # fewer images finish before a bar would be worth reading


@dataclass
class Prediction:
    """Top-k (label, probability) for one image, or the reason it could not be read.

    `low_confidence`: True when the image is far from the training images or its top probability is unusually
    low (`low_confidence_reason` says which; see transferlab.model.confidence), False when it passed that check, None
    when the model has no fitted check (run folders from before it existed).
    """

    source: str
    top: list[tuple[str, float]]
    error: str | None = None
    low_confidence: bool | None = None
    low_confidence_reason: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    def flagged(self, reason: str | None) -> Prediction:
        """This prediction, checked: low confidence for `reason`, or confident when it is None."""
        return replace(self, low_confidence=reason is not None, low_confidence_reason=reason)

    def to_dict(self) -> dict:
        """The JSON record of `transferlab predict --format json`."""
        return {"image": self.source, "top": [{"label": label, "probability": p} for label, p in self.top],
                "error": self.error, "low_confidence": self.low_confidence,
                "low_confidence_reason": self.low_confidence_reason}

    @staticmethod
    def table(predictions: Sequence[Prediction]) -> Table:
        """One row per image: the top class, its probability, the next ones (or why the image was skipped)."""
        checked = any(p.low_confidence is not None for p in predictions)
        table = Table("image", "prediction", "probability", "next", *(["check"] if checked else []))
        table.columns[0].no_wrap = table.columns[1].no_wrap = True  # which image, and its class, stay readable
        if checked:
            table.columns[-1].no_wrap = True  # "low confidence" stays one phrase; the next classes wrap instead
        for p in predictions:
            if p.error:
                table.add_row(short_source(p.source), f"[red]skipped: {p.error}[/]", "", "", *([""] if checked else []))
                continue
            label, prob = p.top[0]
            rest = ", ".join(f"{name} {share:.1%}" for name, share in p.top[1:])
            table.add_row(short_source(p.source), label, f"{prob:.1%}", rest, *([check_cell(p)] if checked else []))
        return table

    @staticmethod
    def write(predictions: Sequence[Prediction], stream: TextIO, output_format: str) -> None:
        """As JSON (one object per image) or CSV (one row per rank, and one per failed image)."""
        if output_format == "json":
            stream.write(json.dumps([p.to_dict() for p in predictions], indent=2) + "\n")
            return
        writer = csv.writer(stream)
        writer.writerow(["image", "rank", "label", "probability", "error", "low_confidence", "low_confidence_reason"])
        for p in predictions:
            flag = ["", ""] if p.low_confidence is None else [str(p.low_confidence).lower(), p.low_confidence_reason or ""]
            writer.writerows([p.source, rank, label, f"{prob:.6f}", "", *flag] for rank, (label, prob) in enumerate(p.top, 1))
            if p.error:
                writer.writerow([p.source, "", "", "", p.error, "", ""])


def short_source(source: str, parts: int = 2) -> str:
    """The tail of an image's path (its folder and name): the part that tells rows apart in a table."""
    path = Path(source)
    return source if len(path.parts) <= parts else str(Path("…", *path.parts[-parts:]))


@dataclass(frozen=True)
class ImageInput:
    """One image to predict: its name (the path, or `<array 2>`-style for in-memory images), the value to decode
    (a Path, bytes or a PIL image), or why it cannot be used at all."""

    name: str
    value: Path | bytes | Image.Image | None
    error: str | None = None

    @property
    def in_memory(self) -> bool:
        return isinstance(self.value, (bytes, Image.Image))


def image_inputs(images: ImageLike | Sequence[ImageLike]) -> list[ImageInput]:
    """Every image in `images`, in order. A single path, array, bytes or PIL image counts as a list of one; inputs
    that cannot be used (a missing file, an array of the wrong shape) are kept with their error so that
    callers report them instead of dropping them."""
    items = [images] if _single(images) else list(images)
    inputs: list[ImageInput] = []
    for item in items:
        if isinstance(item, np.ndarray) and item.ndim == 4:
            inputs.extend(_array_input(frame, len(inputs) + i) for i, frame in enumerate(item))
        elif isinstance(item, np.ndarray):
            inputs.append(_array_input(item, len(inputs)))
        elif isinstance(item, (bytes, bytearray, memoryview)):
            inputs.append(ImageInput(f"<bytes {len(inputs)}>", bytes(item)))
        elif isinstance(item, Image.Image):
            inputs.append(ImageInput(f"<image {len(inputs)}>", item))
        elif isinstance(item, (str, Path)):
            inputs.extend(_path_inputs(Path(item)))
        else:
            inputs.append(ImageInput(f"<input {len(inputs)}>", None, f"unsupported input type {type(item).__name__}"))
    return inputs


def _single(images: Any) -> bool:
    return isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image)) or (
        isinstance(images, np.ndarray) and images.ndim in (2, 3, 4))


def _array_input(array: np.ndarray, index: int) -> ImageInput:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 -> a PIL image (the layout Pillow, OpenCV-converted-to-RGB and
    imageio use); anything else is reported, not guessed at (a float array's range is ambiguous)."""
    name = f"<array {index}>"
    channels = 1 if array.ndim == 2 else array.shape[-1] if array.ndim == 3 else 0
    if array.dtype != np.uint8 or channels not in (1, 3, 4) or min(array.shape[:2], default=0) < 1:
        return ImageInput(name, None, f"arrays must be HxWx3 (or HxW, HxWx4) uint8, got shape {array.shape} "
                                      f"{array.dtype}")
    pixels = array[:, :, 0] if array.ndim == 3 and channels == 1 else array
    return ImageInput(name, Image.fromarray(np.ascontiguousarray(pixels)).convert("RGB"))


def _path_inputs(path: Path) -> list[ImageInput]:
    if path.is_dir():
        files = folder_images(path)
        return [ImageInput(str(f), f) for f in files] or [ImageInput(str(path), None, "no image files in this folder")]
    if not path.exists():
        return [ImageInput(str(path), None, "file not found")]
    if not path.is_file():
        return [ImageInput(str(path), None, "not a regular file")]
    return [ImageInput(str(path), path)]


def expand_paths(sources: Sequence[Path]) -> list[Path]:
    """Files as given (missing ones too: they become failed rows), folders expanded to their image files."""
    paths: list[Path] = []
    for source in sources:
        paths.extend(folder_images(source) if source.is_dir() else [source])
    if not paths:
        raise TransferlabError("no image files found", hint="pass image files or folders that contain images")
    return paths


class Predictor(Protocol):
    def predict(self, images: Sequence[ImageLike], top_k: int = 5) -> list[Prediction]: ...


def predict_with_progress(model: Predictor, images: Sequence[ImageLike], *, top_k: int, quiet: bool = False,
                          **options) -> list[Prediction]:
    """`model.predict` in chunks, with a progress bar on stderr when there are many images."""
    if quiet or len(images) < PROGRESS_THRESHOLD:
        return model.predict(list(images), top_k=top_k, **options)
    predictions: list[Prediction] = []
    with make_progress(console=Console(stderr=True)) as progress:
        task = progress.add_task("predicting", total=len(images), rate="")
        for start in range(0, len(images), PROGRESS_CHUNK):
            predictions += model.predict(list(images[start : start + PROGRESS_CHUNK]), top_k=top_k, **options)
            progress.update(task, completed=len(predictions))
    return predictions


def checked_probabilities(probabilities: np.ndarray, failed: dict[str, str], return_failed: bool):
    """What `predict_proba` returns: the array alone when every input was usable, (array, failed) when asked for;
    a failed input without `return_failed` is an error, so that rows never silently stop matching the inputs."""
    if return_failed:
        return probabilities, failed
    if failed:
        name, reason = next(iter(failed.items()))
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise TransferlabError(f"cannot predict {name}: {reason}{more}",
                               hint="pass return_failed=True to get the other images' probabilities and every reason")
    return probabilities


def predictions_of(inputs: Sequence[ImageInput], probabilities: np.ndarray, kept: np.ndarray, failed: dict[str, str],
                   top_k, doubts: Sequence[str | None] | None = None) -> list[Prediction]:
    """One Prediction per input, in order: `top_k(row)` for the usable ones (flagged by `doubts`, one reason or
    None per usable input, when the model has a confidence check), the reason for the others."""
    rows, reasons = iter(probabilities), iter(doubts or [])
    predictions = []
    for item, ok in zip(inputs, kept):
        if not ok:
            predictions.append(Prediction(item.name, [], failed.get(item.name, "could not decode")))
            continue
        prediction = Prediction(item.name, top_k(next(rows)))
        predictions.append(prediction.flagged(next(reasons)) if doubts is not None else prediction)
    return predictions

def check_cell(prediction: Prediction) -> str:
    if prediction.low_confidence:
        return f"[yellow]low confidence[/]\n{prediction.low_confidence_reason}"
    return "" if prediction.low_confidence is None else "ok"

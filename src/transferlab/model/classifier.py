"""A trained classifier: backbone trunk + head + labels, with predict / evaluate / save / load.

On disk (no pickle): `model.safetensors` holds the head (`head.*`) and any backbone tensors that differ
from the pretrained ones (`backbone.*`, after fine-tuning or training from scratch); `model.json` says how
to rebuild the rest; `labels.txt` lists the classes, one a line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from transferlab.core.config import check_tta
from transferlab.core.errors import TransferlabError, warn
from transferlab.core.files import atomic_path, atomic_write_bytes
from transferlab.core.run_folder import check_run_folder
from transferlab.data.augment import AugmentConfig
from transferlab.data.decoding import ImageDecodeError
from transferlab.features.combined import CombinedExtractor, build_extractor
from transferlab.features.extractor import FeatureExtractor, quantized_trunk_name
from transferlab.features.quantize import LEGACY_SETTINGS, saturates_8bit_weights_here
from transferlab.features.runtimes import digest_path
from transferlab.model.confidence import REFERENCE_KEY, ConfidenceCheck
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.metrics import evaluate_probabilities
from transferlab.model.prediction import (
    ImageInput,
    ImageLike,
    Prediction,
    checked_probabilities,
    image_inputs,
    predictions_of,
)

MODEL_FORMAT = "transferlab-model/1"


class Network(torch.nn.Module):
    """Trunk and head as one module; several image inputs when the trunk combines backbones."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module, probabilities: bool = False):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.probabilities = probabilities

    def forward(self, *images: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.backbone(*images))
        return torch.softmax(logits, dim=1) if self.probabilities else logits


class Classifier:
    """Predicts classes for images. Build one with `transferlab.train(...)` or `transferlab.load(run)`.

    It is a feature extractor (the backbone trunk, with any tensors training changed) plus a head and labels.
    """

    def __init__(
        self,
        *,
        extractor: FeatureExtractor | CombinedExtractor,
        classes: list[str],
        head: torch.nn.Module,
        head_config: HeadConfig,
        strategy: str = "extract",
        run_dir: Path | None = None,
    ):
        self.extractor = extractor
        self.classes = list(classes)
        self.head = head.eval()
        self.head_config = head_config
        self.strategy = strategy
        self.run_dir = run_dir
        self.metrics: dict = {}
        self.history = None
        self.test_predictions = None  # the test split's TestPredictions once training wrote the run
        self.confidence: ConfidenceCheck | None = None  # fitted at training time; None for older runs: no flag
        # Test-time views may be mirrored unless training ruled flips out (digits, text: a mirror changes them).
        self.tta_mirror = True
        self._explainer = None  # built on the first explanation (device copies of the trunks and the head)

    def __repr__(self) -> str:
        return f"Classifier(backbone={self.backbone!r}, strategy={self.strategy!r}, classes={len(self.classes)})"

    # -- notebooks: transferlab.reports.notebook draws (imported on first use, so matplotlib stays unloaded) ----------
    def _repr_html_(self) -> str:
        from transferlab.reports.notebook import classifier_card

        return classifier_card(self)

    def plot_history(self, smooth: float | None = 0.8):
        """Figure: accuracy and loss per epoch, raw and EMA-smoothed (see transferlab.reports.notebook.plot_history)."""
        from transferlab.reports.notebook import plot_history

        return plot_history(self, smooth)

    def plot_confusion_matrix(self):
        """Figure: the test set's row-normalised confusion matrix."""
        from transferlab.reports.notebook import plot_confusion_matrix

        return plot_confusion_matrix(self)

    def show_top_losses(self, n: int = 9, explain: bool = False):
        """Figure: the n misclassified test images with the highest loss (true / predicted / probability);
        `explain`: with the heatmap of the predicted class over each."""
        from transferlab.reports.notebook import show_top_losses

        return show_top_losses(self, n, explain)

    def show_predictions(self, images: Sequence[str | Path | Image.Image], labels: Sequence[str] | None = None):
        """Figure: each image with its predicted class and probability (green/red against `labels`)."""
        from transferlab.reports.notebook import show_predictions

        return show_predictions(self, images, labels)

    def explain(self, images: ImageLike | Sequence[ImageLike], target=None) -> list:
        """Grad-CAM per image (see transferlab.model.explain): an `Explanation` with the heatmap over the image as
        the network saw it, `.overlay()` and `.panel()` pictures, shown inline in a notebook. `target` (a class
        name or index, or one per image) explains that class instead of the predicted one."""
        if self._explainer is None:
            from transferlab.model.explain import Explainer

            self._explainer = Explainer(self.extractor, self.head, self.classes)
        return self._explainer.explain(image_inputs(images), target)

    @property
    def backbone(self) -> str:
        return self.extractor.name

    @property
    def backbone_state(self) -> dict[str, torch.Tensor] | None:
        """The backbone tensors training changed (fine-tuned blocks, or every weight of a scratch network)."""
        return self.extractor.backbone_state

    def network(self, probabilities: bool = False) -> Network:
        """The whole model as one torch module: uint8 NCHW images (one batch per backbone) -> logits, or class
        probabilities (used by export and summary)."""
        return Network(self.extractor.trunk(), self.head, probabilities).eval()

    # -- prediction -------------------------------------------------------------------------------
    def probabilities_from_features(self, features: np.ndarray) -> np.ndarray:
        self.head.eval()
        with torch.inference_mode():
            return torch.softmax(self.head(torch.from_numpy(features)), dim=1).numpy()

    def view_outputs(self, paths: Sequence[str | Path], tta: int) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
        """Probabilities of each view [tta, n_ok, n_classes] (view 0: the image itself, then tta-1 mildly
        augmented views: small crops, and flips unless `tta_mirror` is off), `kept` [n] (whether each path decoded), {path: reason}, and the
        features of view 0 (what the confidence check measures)."""
        check_tta(tta)
        paths = [Path(p) for p in paths]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise TransferlabError(f"no such image file: {missing[0]}")
        result = self.extractor.extract(paths, description="features")
        failed = {str(p): reason for p, reason in result.failed.items()}
        if not result.kept.any():  # nothing decoded: no features to give the head (whose input size they lack)
            return np.zeros((tta, 0, len(self.classes)), np.float32), result.kept, failed, result.features
        decoded = [p for p, k in zip(paths, result.kept) if k]
        views = [self.probabilities_from_features(result.features)]
        light = AugmentConfig.light() if self.tta_mirror else AugmentConfig.light_noflip()
        for view in range(1, tta):
            augmented = self.extractor.extract(decoded, augment=light, view=view, description=f"features: view {view}")
            views.append(self.probabilities_from_features(augmented.features))
        return np.stack(views), result.kept, failed, result.features

    def probabilities(self, inputs: Sequence[ImageInput], tta: int = 1) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        """(probabilities [n_ok, n_classes] of the usable inputs in order, kept [n], {name: reason} for the others).
        Files go through the feature cache (and `tta`); in-memory images are decoded and run uncached, as served."""
        return self.outputs(inputs, tta)[:3]

    def outputs(self, inputs: Sequence[ImageInput], tta: int = 1):
        """`probabilities` plus the features of the usable inputs (what the confidence check measures)."""
        check_tta(tta)
        kept = np.zeros(len(inputs), dtype=bool)
        failed = {item.name: item.error for item in inputs if item.error}
        groups = []  # (positions among all inputs, probabilities, features) of files, then of in-memory images
        files = [i for i, item in enumerate(inputs) if isinstance(item.value, Path)]
        if files:
            views, ok, reasons, features = self.view_outputs([inputs[i].value for i in files], tta)
            groups.append(self._settle(kept, failed, inputs, files, ok, reasons, views.mean(axis=0), features))
        memory = [i for i, item in enumerate(inputs) if item.in_memory]
        if memory:
            if tta != 1:
                raise TransferlabError("tta needs image files (augmented views are cached by file content)",
                                       hint="pass paths, or use tta=1 for arrays, bytes and PIL images")
            features, ok, reasons = self._in_memory_features([inputs[i] for i in memory])
            probs = self.probabilities_from_features(features) if len(features) else np.zeros((0, len(self.classes)), np.float32)
            groups.append(self._settle(kept, failed, inputs, memory, ok, reasons, probs, features))
        groups = [group for group in groups if len(group[0])]
        if not groups:
            return np.zeros((0, len(self.classes)), np.float32), kept, failed, None
        order = np.argsort(np.concatenate([positions for positions, _, _ in groups]))
        probabilities = np.concatenate([probs for _, probs, _ in groups])[order]
        return probabilities, kept, failed, np.concatenate([features for *_, features in groups])[order]

    @staticmethod
    def _settle(kept, failed, inputs, positions, ok, reasons, probabilities, features):
        """Mark one group's usable inputs as kept and record why the others failed; (their positions, probs, features)."""
        for position, k in zip(positions, ok):
            item = inputs[position]
            if k:
                kept[position] = True
            else:
                key = str(item.value) if isinstance(item.value, Path) else item.name
                failed[item.name] = reasons.get(key, "could not decode")
        return np.asarray([position for position, k in zip(positions, ok) if k], dtype=int), probabilities, features

    def _in_memory_features(self, items: Sequence[ImageInput]) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        """All images in one pass; when one fails to decode, one at a time to tell which."""
        values = [item.value for item in items]
        try:
            return self.extractor.features_of_images(values), np.ones(len(items), dtype=bool), {}
        except (ImageDecodeError, OSError, ValueError):
            pass
        features, ok, reasons = [], np.zeros(len(items), dtype=bool), {}
        for index, item in enumerate(items):
            try:
                features.append(self.extractor.features_of_images([item.value]))
                ok[index] = True
            except ImageDecodeError as exc:
                reasons[item.name] = exc.message
            except (OSError, ValueError) as exc:  # a user's lazily opened PIL image whose file is damaged
                reasons[item.name] = f"{type(exc).__name__}: {exc}"[:160]
        return (np.concatenate(features) if features else np.zeros((0, 0), np.float32)), ok, reasons

    def predict_proba(self, images: ImageLike | Sequence[ImageLike], tta: int = 1, *, return_failed: bool = False):
        """Class probabilities [n, n_classes], one row per image (columns in `self.classes` order).

        `images`: a path, a folder (its image files), an HxWx3 uint8 array (or NxHxWx3), bytes, a PIL image, or a
        list of them. An image that cannot be used raises TransferlabError, unless `return_failed=True`: then
        (probabilities of the usable images in order, {name: reason} for the others). `tta` > 1 averages over the
        original and tta-1 mildly augmented views (files only)."""
        probs, _, failed = self.probabilities(image_inputs(images), tta)
        return checked_probabilities(probs, failed, return_failed)

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5, tta: int = 1) -> list[Prediction]:
        """Top-k (label, probability) per image, always a list in input order (`clf.predict("a.jpg")[0]`; a folder
        gives one per image file). An image that cannot be used gets `.error` instead of stopping the others; a
        usable one is flagged `low_confidence` when the fitted check doubts it (see transferlab.model.confidence)."""
        inputs = image_inputs(images)
        probs, kept, failed, features = self.outputs(inputs, tta)
        doubts = self.doubts(features, probs) if len(probs) else None
        return predictions_of(inputs, probs, kept, failed, lambda row: self.top_k(row, top_k), doubts)

    def doubts(self, features: np.ndarray, probabilities: np.ndarray) -> list[str | None] | None:
        """Per image: why its prediction is doubtful, or None if it is not (see transferlab.model.confidence); None
        for the whole batch without a fitted check (run folders from before it existed)."""
        return None if self.confidence is None else self.confidence.assess(features, probabilities)

    def top_k(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
        order = np.argsort(probabilities)[::-1][: max(1, min(k, len(self.classes)))]
        return [(self.classes[i], float(probabilities[i])) for i in order]

    def evaluate(self, paths: Sequence[str | Path], labels: Sequence[int], tta: int = 1) -> dict:
        """Metrics on labelled image files (see `transferlab.model.metrics.evaluate_probabilities`)."""
        probs, kept, failed = self.probabilities([ImageInput(str(p), Path(p)) for p in paths], tta)
        metrics = evaluate_probabilities(np.asarray(labels)[kept], probs, self.classes)
        metrics["n_failed"] = len(failed)
        return metrics

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"head.{k}": v.contiguous() for k, v in self.head.state_dict().items()}
        for name, value in (self.backbone_state or {}).items():
            tensors[f"backbone.{name}"] = value.detach().cpu().contiguous()
        if self.confidence is not None:
            tensors[REFERENCE_KEY] = torch.from_numpy(np.ascontiguousarray(self.confidence.reference))
        with atomic_path(directory / "model.safetensors", sum(t.nbytes for t in tensors.values())) as tmp:
            save_file(tensors, str(tmp))
        description = {
            "format": MODEL_FORMAT,
            "backbone": self.backbone,
            "layer": self.extractor.layer,
            "weights": str(self.extractor.weights) if self.extractor.weights else None,
            "pretrained": self.extractor.pretrained,
            "strategy": self.strategy,
            "head": self.head_config.to_dict(),
            "classes": self.classes,
            "normalization": [list(self.extractor.normalization[0]), list(self.extractor.normalization[1])]
            if self.extractor.normalization
            else None,
            "image_size": self.extractor.image_size,
            "preprocessing": self.extractor.preprocessing(),
            "confidence": self.confidence.to_json() if self.confidence is not None else None,
            "precision": self.extractor.precision,
            "calibration": self.extractor.calibration if self.extractor.precision == "int8" else None,
            "quantization": self.extractor.quantization if self.extractor.precision == "int8" else None,
            "tta_mirror": self.tta_mirror,
        }
        self._save_quantized_trunks(directory)
        atomic_write_bytes(directory / "model.json", json.dumps(description, indent=2).encode())
        atomic_write_bytes(directory / "labels.txt", ("\n".join(self.classes) + "\n").encode())
        return directory

    def _save_quantized_trunks(self, directory: Path) -> None:
        """An int8 run keeps its quantised trunk(s): predictions elsewhere then use the very trunk the head was
        trained on, without recalibrating (which needs the training images and could pick other ranges)."""
        if self.extractor.precision != "int8":
            return
        parts = getattr(self.extractor, "parts", [self.extractor])
        for part in parts:
            part.runner.session()  # the trunk is quantised (or restored) by now; this makes sure of it
            source, target = part.quantized_path(), directory / quantized_trunk_name(part.name)
            atomic_write_bytes(target, source.read_bytes())
            atomic_write_bytes(digest_path(target), digest_path(source).read_bytes())

    @classmethod
    def load(cls, directory: str | Path, cache_dir: Path | None = None, device: str = "auto") -> Classifier:
        """The run folder's classifier; its trunk runs on `device` ("auto": CUDA when there is a GPU)."""
        directory = Path(directory)
        description_path = directory / "model.json"
        check_run_folder(directory)  # a missing, truncated or damaged model is one clear line, not a loader traceback
        description = json.loads(description_path.read_text())
        if description.get("format") != MODEL_FORMAT:
            raise TransferlabError(f"unsupported model format {description.get('format')!r} in {description_path}")
        tensors = load_file(str(directory / "model.safetensors"))
        head_config = HeadConfig(**description["head"])
        head = build_head(head_config)
        head.load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
        backbone_state = {k[len("backbone."):]: v for k, v in tensors.items() if k.startswith("backbone.")}
        extractor = build_extractor(
            description["backbone"],
            layer=description.get("layer"),
            weights=description.get("weights"),
            pretrained=description.get("pretrained", True),
            backbone_state=backbone_state or None,
            normalization=description.get("normalization"),
            image_size=description.get("image_size"),
            precision=description.get("precision") or "float32",  # runs from before int8 are float32
            calibration=description.get("calibration"),
            quantization=description.get("quantization") or LEGACY_SETTINGS,  # int8 runs from before it: legacy
            trunk_dir=directory,
            cache_dir=cache_dir,
            device=device,
            quiet=True,
        )
        classifier = cls(
            extractor=extractor,
            classes=description["classes"],
            head=head,
            head_config=head_config,
            strategy=description.get("strategy", "extract"),
            run_dir=directory,
        )
        warn_of_saturation(extractor)
        classifier.tta_mirror = description.get("tta_mirror", True)  # runs from before it: always mirrored
        if description.get("confidence") and REFERENCE_KEY in tensors:
            classifier.confidence = ConfidenceCheck.from_json(description["confidence"], tensors[REFERENCE_KEY].numpy())
        metrics_path = directory / "metrics.json"
        if metrics_path.is_file():
            classifier.metrics = json.loads(metrics_path.read_text())
        return classifier


def warn_of_saturation(extractor: FeatureExtractor | CombinedExtractor) -> None:
    """An int8 trunk made before 2026-12-04 has 8-bit weights, which saturate on x86 CPUs without VNNI: said once
    at load, not hidden (its head was fitted to that trunk's features, so it is still the trunk that runs)."""
    if extractor.precision == "int8" and extractor.quantization == LEGACY_SETTINGS and saturates_8bit_weights_here():
        warn("this run's int8 trunk was made by an older transferlab with 8-bit weights, which saturate on this CPU "
             "(x86 without VNNI): its features lose accuracy here; train the run again")

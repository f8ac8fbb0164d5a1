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

from transferlab.augment import AugmentConfig
from transferlab.errors import TransferlabError
from transferlab.prediction import Prediction
from transferlab.extractors import CombinedExtractor, build_extractor
from transferlab.features import FeatureExtractor, quantized_trunk_name
from transferlab.files import atomic_path, atomic_write_bytes
from transferlab.heads import HeadConfig, build_head
from transferlab.metrics import evaluate_probabilities
from transferlab.options import check_tta
from transferlab.runtimes import digest_path

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

    def __repr__(self) -> str:
        return f"Classifier(backbone={self.backbone!r}, strategy={self.strategy!r}, classes={len(self.classes)})"

    # -- notebooks: transferlab.notebook draws (imported on first use, so matplotlib stays unloaded) ----------
    def _repr_html_(self) -> str:
        from transferlab.notebook import classifier_card

        return classifier_card(self)

    def plot_history(self, smooth: float | None = 0.8):
        """Figure: accuracy and loss per epoch, raw and EMA-smoothed (see transferlab.notebook.plot_history)."""
        from transferlab.notebook import plot_history

        return plot_history(self, smooth)

    def plot_confusion_matrix(self):
        """Figure: the test set's row-normalised confusion matrix."""
        from transferlab.notebook import plot_confusion_matrix

        return plot_confusion_matrix(self)

    def show_top_losses(self, n: int = 9):
        """Figure: the n misclassified test images with the highest loss (true / predicted / probability)."""
        from transferlab.notebook import show_top_losses

        return show_top_losses(self, n)

    def show_predictions(self, images: Sequence[str | Path | Image.Image], labels: Sequence[str] | None = None):
        """Figure: each image with its predicted class and probability (green/red against `labels`)."""
        from transferlab.notebook import show_predictions

        return show_predictions(self, images, labels)

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

    def view_probabilities(self, paths: Sequence[str | Path], tta: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
        """Probabilities of each view [tta, n_ok, n_classes] (view 0: the image itself, then tta-1 mildly
        augmented views: flips, small crops), `kept` [n] (whether each path decoded) and {path: reason}."""
        check_tta(tta)
        paths = [Path(p) for p in paths]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise TransferlabError(f"no such image file: {missing[0]}")
        result = self.extractor.extract(paths, description="features")
        decoded = [p for p, k in zip(paths, result.kept) if k]
        views = [self.probabilities_from_features(result.features)]
        light = AugmentConfig.light()
        for view in range(1, tta):
            augmented = self.extractor.extract(decoded, augment=light, view=view, description=f"features: view {view}")
            views.append(self.probabilities_from_features(augmented.features))
        return np.stack(views), result.kept, {str(p): reason for p, reason in result.failed.items()}

    def predict_proba(self, images: Sequence[str | Path | bytes | Image.Image], tta: int = 1) -> tuple[np.ndarray, dict]:
        """Probabilities [n_ok, n_classes] for the images that decode, and {"kept": [n] bool, "failed":
        {source: reason}}. `tta` > 1 averages over the original and tta-1 mildly augmented views."""
        if all(isinstance(im, (Image.Image, bytes)) for im in images):  # in memory (serving): decoded uncached
            return self.probabilities_from_features(self.extractor.features_of_images(list(images))), {}
        views, kept, failed = self.view_probabilities(images, tta)
        return views.mean(axis=0), {"kept": kept, "failed": failed}

    def predict(self, images: Sequence[str | Path | bytes | Image.Image], top_k: int = 5, tta: int = 1) -> list[Prediction]:
        probs, info = self.predict_proba(images, tta=tta)
        kept = info.get("kept", np.ones(len(images), dtype=bool))
        failed = info.get("failed", {})
        rows = iter(probs)
        predictions = []
        for image, ok in zip(images, kept):
            source = str(image) if not isinstance(image, (Image.Image, bytes)) else "<image>"
            if ok:
                predictions.append(Prediction(source, self.top_k(next(rows), top_k)))
            else:
                predictions.append(Prediction(source, [], error=failed.get(source, "could not decode")))
        return predictions

    def top_k(self, probabilities: np.ndarray, k: int) -> list[tuple[str, float]]:
        order = np.argsort(probabilities)[::-1][: max(1, min(k, len(self.classes)))]
        return [(self.classes[i], float(probabilities[i])) for i in order]

    def evaluate(self, paths: Sequence[str | Path], labels: Sequence[int], tta: int = 1) -> dict:
        """Metrics on labelled image files (see `transferlab.metrics.evaluate_probabilities`)."""
        probs, info = self.predict_proba(paths, tta=tta)
        y = np.asarray(labels)[info["kept"]]
        metrics = evaluate_probabilities(y, probs, self.classes)
        metrics["n_failed"] = len(info["failed"])
        return metrics

    # -- persistence ------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"head.{k}": v.contiguous() for k, v in self.head.state_dict().items()}
        for name, value in (self.backbone_state or {}).items():
            tensors[f"backbone.{name}"] = value.detach().cpu().contiguous()
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
            "preprocessing": self.extractor.preprocessing(),
            "precision": self.extractor.precision,
            "calibration": self.extractor.calibration if self.extractor.precision == "int8" else None,
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
    def load(cls, directory: str | Path, cache_dir: Path | None = None) -> Classifier:
        directory = Path(directory)
        description_path = directory / "model.json"
        if not description_path.is_file():
            raise TransferlabError(
                f"{directory} is not a transferlab run folder (no model.json)",
                hint="pass the folder written by `transferlab train --out DIR`",
            )
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
            precision=description.get("precision") or "float32",  # runs from before int8 are float32
            calibration=description.get("calibration"),
            trunk_dir=directory,
            cache_dir=cache_dir,
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
        metrics_path = directory / "metrics.json"
        if metrics_path.is_file():
            classifier.metrics = json.loads(metrics_path.read_text())
        return classifier

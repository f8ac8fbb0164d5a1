"""Feature extraction: a frozen backbone trunk run over image files, with a content-addressed cache.

The trunk runs in a runtime from `transferlab.features.runtimes` (ONNX Runtime on a CPU, PyTorch on CUDA, or one
registered from outside). Decoding happens in worker threads while the runtime works on the previous batch.
Features are cached (`transferlab.features.cache`) keyed by the image bytes' hash, so a killed run loses at most
the batch in flight and a later run (another head, another strategy) reuses the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from transferlab.backbones import registry as backbones
from transferlab.backbones.trunk import Trunk, split_backbone, stage_count
from transferlab.core.config import (
    DEFAULT_BACKBONE,
    INT8_DEFAULT_BACKBONES,
    MIN_IMAGE_SIZE,
)
from transferlab.core.device import resolve_device
from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_write_bytes, memoized_file_digest
from transferlab.core.progress import make_progress
from transferlab.data.augment import AugmentConfig, augment_image
from transferlab.data.decoding import ImageDecodeError, open_image
from transferlab.features.cache import FeatureCache
from transferlab.features.quantize import LEGACY_SETTINGS, SETTINGS
from transferlab.features.runtimes import (
    Runtime,
    TrunkSource,
    digest_path,
    make_runtime,
    resolve_precision,
    resolve_runtime,
    verified,
)

FORMAT_VERSION = 1  # bump when the trunk wrapper or the preprocessing changes meaning
CALIBRATION_IMAGES = 300  # int8 calibration: a few hundred training images (ranges settle well before that)


@dataclass
class ExtractionResult:
    """Features of the images that decoded; `kept[i]` says whether paths[i] has a row in `features`."""

    features: np.ndarray
    kept: np.ndarray
    failed: dict[Path, str] = field(default_factory=dict)
    cache_hits: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        computed = int(self.kept.sum()) - self.cache_hits
        return computed / self.seconds if self.seconds > 0 and computed > 0 else 0.0


class FeatureExtractor:
    """Runs a frozen backbone trunk over image files and returns (cached) pooled features.

    >>> fx = FeatureExtractor("efficientnet_lite0")
    >>> result = fx.extract(paths)          # result.features: float32 [n, 1280]
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        *,
        layer: int | None = None,
        weights: str | Path | None = None,
        backbone_state: dict[str, torch.Tensor] | None = None,
        pretrained: bool = True,
        device: str = "auto",
        runtime: str = "auto",
        batch_size: int = 32,
        cache_dir: str | Path | None = None,
        use_cache: bool = True,
        quiet: bool = False,
        until: str | None = None,
        normalization: tuple[Sequence[float], Sequence[float]] | None = None,
        image_size: int | None = None,
        precision: str = "float32",
        calibration: str | None = None,
        trunk_dir: str | Path | None = None,
        quantization: str = SETTINGS,
    ):
        """`until` names a block (see `split_backbone`): the extractor then returns the unpooled activations
        entering it, flattened to [n, c*h*w] and stored as float16 (they are large; fine-tuning caches them).
        `normalization` (mean, std per channel, for pixels scaled to 0..1) replaces the backbone's own: a network
        trained from scratch with featurewise centering / std normalisation fitted them on its training images.
        `image_size` replaces the backbone's input size (its resize size scales with it): small source images
        such as 64 px digits gain nothing from 224 px, and fine-tuning end to end costs the square of the size.
        `precision` "int8" runs the trunk quantised (ONNX Runtime), calibrated on the images given to
        `calibrate_on` (or identified by `calibration`, with the quantised trunk in the cache or in `trunk_dir`,
        a run folder); "auto" picks int8 for the backbones in `options.INT8_DEFAULT_BACKBONES`. `quantization`
        names the settings of that int8 trunk (`quantize.SETTINGS`; a run folder's trunk may be LEGACY_SETTINGS)."""
        if batch_size < 1:
            raise TransferlabError(f"batch size must be >= 1, got {batch_size}")
        if image_size is not None and image_size < MIN_IMAGE_SIZE:
            raise TransferlabError(f"image size must be >= {MIN_IMAGE_SIZE} pixels, got {image_size}")
        spec = backbones.get_spec(backbone)
        self.spec = dataclasses.replace(spec, input_size=image_size) if image_size else spec
        self.image_size = image_size
        self.layer = layer
        self.until = until
        self.normalization = (tuple(normalization[0]), tuple(normalization[1])) if normalization else None
        self.dtype = np.float16 if until else np.float32
        self.weights = weights
        self.backbone_state = backbone_state
        self.pretrained = pretrained
        self.requested_device = device  # as asked: a Ray cluster decides "auto" by its own GPUs, not this machine's
        self.device = resolve_device(device)
        self.runtime = resolve_runtime(runtime, self.device)
        frozen = not (until or backbone_state or normalization) and pretrained
        self.precision = resolve_precision(precision, self.runtime, frozen and self.spec.name in INT8_DEFAULT_BACKBONES)
        if self.precision == "int8" and not frozen:
            raise TransferlabError("--precision int8 quantises a frozen pretrained trunk; this one is trained or cut",
                                   hint="use --precision float32")
        self.calibration = calibration  # identity of the calibration images (int8)
        self.quantization = quantization
        self._calibration_paths: list[Path] = []
        self.trunk_dir = Path(trunk_dir) if trunk_dir else None
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else backbones.default_cache_dir()
        self.use_cache = use_cache
        self.quiet = quiet
        self._trunk: Trunk | None = None
        self._runtime: Runtime | None = None
        self._key: str | None = None
        self._float_key: str | None = None
        self._cache: FeatureCache | None = None

    # -- identity ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_sizes(self) -> list[int]:
        """The size of each image input the trunk takes (one; a combination of backbones takes several)."""
        return [self.spec.input_size]

    def preprocessing(self) -> dict:
        """How images become the trunk's input (model.json and the ONNX export record it)."""
        return {
            "input_size": self.spec.input_size,
            "resize_size": self.spec.resize_size,
            "interpolation": self.spec.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
            "input": "uint8 RGB, NCHW",
        }

    @property
    def mean(self) -> tuple[float, ...]:
        return self.normalization[0] if self.normalization else self.spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.normalization[1] if self.normalization else self.spec.std

    @property
    def key(self) -> str:
        """Hash of everything that determines a feature vector except the image and its augmentation: int8
        features (precision, calibration images, quantisation settings) never mix with float ones or each other."""
        if self._key is None:
            if self.precision == "float32":
                self._key = self.float_key
            elif self.calibration is None:
                raise TransferlabError(f"int8 features of {self.name} need calibration images",
                                       hint="call calibrate_on(training image paths) first")
            else:
                quantized = {"float": self.float_key, "precision": self.precision, "calibration": self.calibration}
                if self.quantization != LEGACY_SETTINGS:  # absent for those: a legacy run finds its trunk cached
                    quantized["quantization"] = self.quantization
                self._key = hashlib.blake2b(json.dumps(quantized, sort_keys=True).encode(), digest_size=12).hexdigest()
        return self._key

    @property
    def float_key(self) -> str:
        """The key of the float32 trunk (its ONNX file and its features); unchanged by int8 precision."""
        if self._float_key is None:
            parts = {
                "format": FORMAT_VERSION,
                "backbone": self.spec.name,
                "weights": backbones.weights_fingerprint(self.spec.name, self.weights, self.cache_dir)
                if self.pretrained
                else "random",
                "state": state_fingerprint(self.backbone_state),
                "layer": self.layer,
                **({"until": self.until} if self.until else {}),  # absent otherwise: existing keys stay valid
                "input_size": self.spec.input_size,
                "resize": self.spec.resize_size,
                "interpolation": self.spec.interpolation,
                "mean": self.mean,
                "std": self.std,
            }
            self._float_key = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=12).hexdigest()
        return self._float_key

    @property
    def cache(self) -> FeatureCache:
        if self._cache is None:
            self._cache = FeatureCache(
                self.cache_dir / "features" / f"{self.spec.name}-{self.key}.sqlite", dtype=self.dtype
            )
        return self._cache

    # -- network ----------------------------------------------------------------------------------
    def trunk(self) -> Trunk:
        if self._trunk is None:
            model = backbones.create_backbone(
                self.spec.name, weights=self.weights, pretrained=self.pretrained, cache_dir=self.cache_dir
            )
            if self.backbone_state:
                model.load_state_dict(self.backbone_state, strict=False)
            self._check_layer(model)
            if self.until:
                self._trunk = Trunk(split_backbone(model, self.until)[0], self.mean, self.std, pool=False)
            else:
                self._trunk = Trunk(model, self.mean, self.std, self.layer)
            self._trunk.eval()
        return self._trunk

    def _check_layer(self, model: torch.nn.Module) -> None:
        if self.layer is None:
            return
        n = stage_count(model)
        if not -n <= self.layer < n:
            raise TransferlabError(
                f"--layer {self.layer} is out of range for {self.spec.name}, which has {n} stages",
                hint=f"use an index from 0 to {n - 1} (or -1 for the last)",
            )

    def onnx_path(self) -> Path:
        return self.cache_dir / "onnx" / f"{self.spec.name}-{self.float_key}.onnx"

    def quantized_path(self) -> Path:
        """The cached int8 trunk (its key names the calibration images)."""
        return self.cache_dir / "onnx" / f"{self.spec.name}-{self.key}.int8.onnx"

    @property
    def runner(self) -> Runtime:
        """The runtime that computes features (built on first use: an ONNX export, a quantisation or a network
        load)."""
        if self._runtime is None:
            quantized = self.quantized_path() if self.precision == "int8" else None
            if quantized is not None:
                restore_quantized(quantized, self.trunk_dir / quantized_trunk_name(self.name) if self.trunk_dir else None)
            source = TrunkSource(self.trunk, self.onnx_path(), self.spec.input_size, self.device,
                                 precision=self.precision, quantized_path=quantized, calibration=self.calibration_batches)
            self._runtime = make_runtime(self.runtime, source)
        return self._runtime

    # -- int8 calibration ---------------------------------------------------------------------------
    def calibrate_on(self, paths: Sequence[Path]) -> None:
        """Calibrate an int8 trunk on (up to CALIBRATION_IMAGES of) these training images; no-op for float32.

        The sample is the images with the smallest content digests, so the same training set gives the same
        calibration (and the cached int8 trunk and features are reused) whatever the order of the paths."""
        if self.precision != "int8":
            return
        sample = sorted((memoized_file_digest(Path(p)), Path(p)) for p in paths)[:CALIBRATION_IMAGES]
        identity = hashlib.blake2b("".join(d for d, _ in sample).encode(), digest_size=12).hexdigest()
        if identity != self.calibration:
            if self._cache is not None:
                self._cache.close()
            self.calibration, self._key, self._cache, self._runtime = identity, None, None, None
        self._calibration_paths = [path for _, path in sample]

    def calibration_batches(self) -> Iterator[np.ndarray]:
        """uint8 NCHW batches of the calibration images, decoded and preprocessed exactly as extraction does."""
        paths = self._calibration_paths
        if self.quantization != SETTINGS:  # the trunk would be made with SETTINGS, not those its key names
            raise TransferlabError(f"int8 trunks are quantised with {SETTINGS} now, not {self.quantization}",
                                   hint="train the run again, or keep its trunk-*.int8.onnx beside model.json")
        if not paths:
            raise TransferlabError(
                f"the int8 trunk of {self.name} is neither cached nor in the run folder, and its calibration "
                "images are unknown here", hint="train the run again, or keep its trunk-*.int8.onnx beside model.json")
        keys = [str(path) for path in paths]
        for _, batch, _ in self._decoded_batches(paths, keys, list(range(len(paths))), None):
            if len(batch):
                yield np.ascontiguousarray(batch.transpose(0, 3, 1, 2))

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [n, h, w, 3] -> [n, d] in self.dtype (float32, or float16 for unpooled activations)."""
        out = self.runner.run(np.ascontiguousarray(batch.transpose(0, 3, 1, 2)))
        # rounded here, not only when stored, so a cold run returns exactly what a warm run reads back
        out = out.reshape(len(out), -1).astype(self.dtype, copy=False)
        if not np.isfinite(out).all():  # a broken trunk: never cached, trained on or served
            raise TransferlabError(
                f"the {self.runtime} runtime gave non-finite features for {self.name}; nothing was cached",
                hint=f"delete {self.cache_dir / 'onnx'} and run again, or try --runtime torch",
            )
        return out

    # -- images -----------------------------------------------------------------------------------
    def prepare(self, source: Path | bytes | Image.Image, augment: AugmentConfig | None = None, seed: int = 0):
        """Decode (at reduced JPEG scale when possible), resize, centre-crop, optionally augment -> uint8 HxWx3."""
        size = self.spec.resize_size
        image = source if isinstance(source, Image.Image) else open_image(source, draft_size=(size, size))
        image = image.convert("RGB")
        if augment is not None:
            return np.asarray(augment_image(Image.fromarray(backbones.preprocess(image, self.spec)), augment, seed))
        return backbones.preprocess(image, self.spec)

    def prepare_or_reason(self, source: Path | bytes, key: str, augment: AugmentConfig | None = None):
        """(uint8 HxWx3, None), or (None, why it failed) for a file that does not decode; `key` is its cache key
        (seeding its augmentation). Every engine decodes through here, so failures read the same on each."""
        try:
            seed = augmentation_seed(key) if augment is not None else 0
            return self.prepare(source, augment, seed), None
        except ImageDecodeError as exc:
            return None, exc.message
        except (OSError, ValueError) as exc:  # anything else PIL raises on a bad file
            return None, f"{type(exc).__name__}: {exc}"

    def features_of_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Features of in-memory images, uncached (serving, ImageNet demo)."""
        if not images:
            return np.zeros((0, 0), dtype=np.float32)
        out = [
            self.run_batch(np.stack([self.prepare(im) for im in images[i : i + self.batch_size]]))
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(out)

    # -- datasets ---------------------------------------------------------------------------------
    def extract(
        self,
        paths: Sequence[Path],
        *,
        augment: AugmentConfig | None = None,
        view: int = 0,
        description: str = "extracting features",
    ) -> ExtractionResult:
        """Features for every path that decodes; failures are reported, never fatal."""
        start = time.perf_counter()
        paths = [Path(p) for p in paths]
        digests = [memoized_file_digest(p) for p in paths]
        keys = [cache_key(d, augment, view) for d in digests]
        cached = self.cache.get_many(keys) if self.use_cache else {}
        todo = [i for i, k in enumerate(keys) if k not in cached]
        computed, failed = self._compute(paths, keys, todo, augment, description)
        rows, kept = [], np.zeros(len(paths), dtype=bool)
        for i, k in enumerate(keys):
            vector = cached.get(k)
            if vector is None:
                vector = computed.get(k)
            if vector is not None:
                rows.append(vector)
                kept[i] = True
        dim = rows[0].shape[0] if rows else 0
        features = np.stack(rows).astype(self.dtype, copy=False) if rows else np.zeros((0, dim), self.dtype)
        return ExtractionResult(
            features=features,
            kept=kept,
            failed=failed,
            cache_hits=len(keys) - len(todo),
            seconds=time.perf_counter() - start,
        )

    def _compute(self, paths, keys, todo, augment, description):
        computed: dict[str, np.ndarray] = {}
        failed: dict[Path, str] = {}
        if not todo:
            return computed, failed
        with make_progress(self.quiet) as progress:
            task = progress.add_task(description, total=len(todo), rate="")
            done = 0
            t0 = time.perf_counter()
            for batch_keys, batch, batch_failed in self._decoded_batches(paths, keys, todo, augment):
                failed.update(batch_failed)
                if batch_keys:
                    vectors = self.run_batch(batch)
                    new = dict(zip(batch_keys, vectors))
                    computed.update(new)
                    if self.use_cache:
                        self.cache.put_many(new)
                done += len(batch_keys) + len(batch_failed)
                rate = done / max(time.perf_counter() - t0, 1e-9)
                progress.update(task, completed=done, rate=f"{rate:.0f} img/s")
        return computed, failed

    def _decoded_batches(self, paths, keys, todo, augment) -> Iterator[tuple[list[str], np.ndarray, dict]]:
        """Yield decoded batches; the pool decodes batch i+1 while the caller runs batch i."""

        def decode(i: int):
            return i, *self.prepare_or_reason(paths[i], keys[i], augment)

        chunks = [todo[s : s + self.batch_size] for s in range(0, len(todo), self.batch_size)]
        with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2))) as pool:
            pending = [pool.map(decode, chunks[0])] if chunks else []
            for n in range(len(chunks)):
                if n + 1 < len(chunks):
                    pending.append(pool.map(decode, chunks[n + 1]))
                results = list(pending.pop(0))
                ok = [(i, arr) for i, arr, err in results if err is None]
                batch_failed = {paths[i]: err for i, arr, err in results if err is not None}
                batch = np.stack([arr for _, arr in ok]) if ok else np.zeros((0,), np.uint8)
                yield [keys[i] for i, _ in ok], batch, batch_failed


def cache_key(digest: str, augment: AugmentConfig | None = None, view: int = 0) -> str:
    """The cache key of an image (its bytes' digest) or of one augmented view of it; every engine uses this."""
    return digest + (f":aug={augment.key()}:view={view}" if augment is not None else "")


def quantized_trunk_name(backbone: str) -> str:
    """The file name of a backbone's int8 trunk in a run folder."""
    return f"trunk-{backbone}.int8.onnx"


def restore_quantized(cached: Path, saved: Path | None) -> None:
    """Copy a run folder's int8 trunk into the cache when the cache lacks it (another machine, a cleared cache):
    predictions then use exactly the trunk the head was trained on, without calibration images."""
    if verified(cached) or saved is None or not verified(saved):
        return
    atomic_write_bytes(cached, saved.read_bytes())
    atomic_write_bytes(digest_path(cached), digest_path(saved).read_bytes())


def augmentation_seed(key: str) -> int:
    """Seed of one augmented view, from its whole cache key (image digest, augmentation key and view index),
    so that every view of an image is a different draw."""
    return int(hashlib.blake2b(key.encode(), digest_size=8).hexdigest(), 16)


def state_fingerprint(state: dict[str, torch.Tensor] | None) -> str | None:
    if not state:
        return None
    h = hashlib.blake2b(digest_size=12)
    for name in sorted(state):
        h.update(name.encode())
        h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

"""Feature extraction engine: a frozen backbone trunk run over images, with a content-addressed cache.

On a CPU the trunk is exported once to ONNX (cached on disk) and run by ONNX Runtime, 2-4x faster than
eager PyTorch here; on CUDA it runs in PyTorch. Decoding happens in worker threads while the runtime
works on the previous batch. Features are cached in SQLite keyed by the image bytes' hash, so a killed
run loses at most the batch in flight and a later run (another head, another strategy) reuses the rest.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import sqlite3
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from transferlab import backbones
from transferlab.augment import AugmentConfig, augment_image
from transferlab.data import ImageDecodeError, open_image
from transferlab.errors import TransferlabError

FORMAT_VERSION = 1  # bump when the trunk wrapper or the preprocessing changes meaning


def resolve_device(device: str = "auto") -> str:
    """'auto' means CUDA when a GPU is present, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TransferlabError(f"device {device!r} requested but no CUDA GPU is available", hint="use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise TransferlabError(f"unknown device {device!r}", hint="use auto, cpu or cuda")
    return device


RUNTIMES = ("auto", "onnx", "torch")


def resolve_runtime(runtime: str, device: str) -> str:
    """'auto' means ONNX Runtime on a CPU (2-4x faster here) and PyTorch on CUDA."""
    if runtime not in RUNTIMES:
        raise TransferlabError(f"unknown runtime {runtime!r}", hint=f"choose one of: {', '.join(RUNTIMES)}")
    if runtime == "onnx" and device != "cpu":
        raise TransferlabError("the ONNX Runtime path runs on the CPU only", hint="use --runtime torch with a GPU")
    if runtime == "auto":
        return "onnx" if device == "cpu" else "torch"
    return runtime


class Trunk(torch.nn.Module):
    """uint8 NCHW images -> normalised -> backbone up to `layer` -> globally pooled features.

    Normalisation lives inside the network so that exported models take raw RGB bytes.
    `layer=None` gives the backbone's pre-logits features; an int picks the output of that stage
    (negative counts from the end), which suits images far from ImageNet. `pool=False` keeps the spatial
    map ([n, c, h, w]); with `layer=None` that is the output of `forward_features` (e.g. a split prefix).
    """

    def __init__(self, model: torch.nn.Module, mean, std, layer: int | None = None, pool: bool = True):
        super().__init__()
        self.model = model
        self.layer = layer
        self.pool = pool
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        if self.layer is None and not self.pool:
            return self.model.forward_features(x)
        if self.layer is None:
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        (x,) = self.model.forward_intermediates(x, indices=[self.layer], intermediates_only=True)
        return x.mean(dim=(2, 3)) if self.pool else x


def split_backbone(model: torch.nn.Module, boundary: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(prefix, tail): copies of `model` cut before `boundary`, a top-level child ("layer4") or an element of a
    top-level Sequential ("blocks.6").

    `prefix.forward_features(x)` gives the activations at the boundary and
    `tail.forward_head(tail.forward_features(a), pre_logits=True)` the pooled features from them: the modules
    on the other side are replaced by Identity, so both keep the model's own forward code and the tail's
    state_dict keys are those of the full model. This assumes children registered in forward order (true of
    timm's CNNs); models that add parameters between children (ViT's position embedding) do not split,
    which callers detect by comparing with the whole model.
    """
    container, _, index = boundary.partition(".")
    names = [name for name, _ in model.named_children()]
    if container not in names or (index and not index.isdigit()):
        raise TransferlabError(f"cannot split {type(model).__name__} at {boundary!r}: no such block")
    position = names.index(container)
    prefix, tail = copy.deepcopy(model), copy.deepcopy(model)
    for name in names[position + 1 :]:
        setattr(prefix, name, torch.nn.Identity())
    for name in names[:position]:
        setattr(tail, name, torch.nn.Identity())
    if index:
        setattr(prefix, container, getattr(prefix, container)[: int(index)])
        setattr(tail, container, getattr(tail, container)[int(index) :])
    else:
        setattr(prefix, container, torch.nn.Identity())
    return prefix, tail


def stage_count(model: torch.nn.Module) -> int:
    return len(model.feature_info) if hasattr(model, "feature_info") else 0


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


class FeatureCache:
    """Feature vectors in one SQLite file per extractor; each batch is one transaction (atomic on kill -9)."""

    def __init__(self, path: Path, dtype: type = np.float32):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dtype = np.dtype(dtype)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vector FROM features WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=self.dtype)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._db:  # one transaction: all of the batch or nothing
            self._db.executemany(
                "INSERT OR REPLACE INTO features (key, vector) VALUES (?, ?)",
                [(k, np.ascontiguousarray(v, dtype=self.dtype).tobytes()) for k, v in items.items()],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.chmod(tmp, 0o644)  # mkstemp makes files private (0600); artifacts are meant to be shared
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_progress(quiet: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        transient=False,
    )


class FeatureExtractor:
    """Runs a frozen backbone trunk over image files and returns (cached) pooled features.

    >>> fx = FeatureExtractor("efficientnet_lite0")
    >>> result = fx.extract(paths)          # result.features: float32 [n, 1280]
    """

    def __init__(
        self,
        backbone: str = "efficientnet_lite0",
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
    ):
        """`until` names a block (see `split_backbone`): the extractor then returns the unpooled activations
        entering it, flattened to [n, c*h*w] and stored as float16 (they are large; fine-tuning caches them)."""
        if batch_size < 1:
            raise TransferlabError(f"batch size must be >= 1, got {batch_size}")
        self.spec = backbones.get_spec(backbone)
        self.layer = layer
        self.until = until
        self.dtype = np.float16 if until else np.float32
        self.weights = weights
        self.backbone_state = backbone_state
        self.pretrained = pretrained
        self.device = resolve_device(device)
        self.runtime = resolve_runtime(runtime, self.device)
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else backbones.default_cache_dir()
        self.use_cache = use_cache
        self.quiet = quiet
        self._trunk: Trunk | None = None
        self._session = None
        self._key: str | None = None
        self._cache: FeatureCache | None = None

    # -- identity ---------------------------------------------------------------------------------
    @property
    def key(self) -> str:
        """Hash of everything that determines a feature vector except the image and its augmentation."""
        if self._key is None:
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
                "mean": self.spec.mean,
                "std": self.spec.std,
            }
            self._key = hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=12).hexdigest()
        return self._key

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
                self._trunk = Trunk(split_backbone(model, self.until)[0], self.spec.mean, self.spec.std, pool=False)
            else:
                self._trunk = Trunk(model, self.spec.mean, self.spec.std, self.layer)
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
        return self.cache_dir / "onnx" / f"{self.spec.name}-{self.key}.onnx"

    def _onnx_session(self):
        import onnxruntime as ort

        path = self.onnx_path()
        if not path.exists():
            export_onnx(self.trunk(), self.spec.input_size, path)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = os.cpu_count() or 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run_batch(self, batch: np.ndarray) -> np.ndarray:
        """uint8 [n, h, w, 3] -> [n, d] in self.dtype (float32, or float16 for unpooled activations)."""
        nchw = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        if self.runtime == "onnx":
            if self._session is None:
                self._session = self._onnx_session()
            out = self._session.run(None, {"images": nchw})[0]
        else:
            trunk = self.trunk().to(self.device)
            with torch.inference_mode():
                out = trunk(torch.from_numpy(nchw).to(self.device, non_blocking=True)).float().cpu().numpy()
        # rounded here, not only when stored, so a cold run returns exactly what a warm run reads back
        return out.reshape(len(out), -1).astype(self.dtype, copy=False)

    # -- images -----------------------------------------------------------------------------------
    def prepare(self, source: Path | bytes | Image.Image, augment: AugmentConfig | None = None, seed: int = 0):
        """Decode (at reduced JPEG scale when possible), resize, centre-crop, optionally augment -> uint8 HxWx3."""
        size = self.spec.resize_size
        image = source if isinstance(source, Image.Image) else open_image(source, draft_size=(size, size))
        image = image.convert("RGB")
        if augment is not None:
            return np.asarray(augment_image(Image.fromarray(backbones.preprocess(image, self.spec)), augment, seed))
        return backbones.preprocess(image, self.spec)

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
        digests = [file_digest(p) for p in paths]
        suffix = f":aug={augment.key()}:view={view}" if augment is not None else ""
        keys = [d + suffix for d in digests]
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
            try:
                seed = augmentation_seed(keys[i]) if augment is not None else 0
                return i, self.prepare(paths[i], augment, seed), None
            except ImageDecodeError as exc:
                return i, None, exc.message
            except (OSError, ValueError) as exc:  # anything else PIL raises on a bad file
                return i, None, f"{type(exc).__name__}: {exc}"

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


def export_onnx(module: torch.nn.Module, input_size: int, path: Path, output_name: str = "features") -> Path:
    """Export a uint8-NCHW-input module to ONNX with a dynamic batch axis, atomically."""
    dummy = torch.zeros((2, 3, input_size, input_size), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".onnx.tmp")
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes files private (0600); exported models are meant to be shared
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated but exports timm CNNs reliably and fast
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.cpu().eval(),
                (dummy,),
                tmp,
                input_names=["images"],
                output_names=[output_name],
                dynamic_axes={"images": {0: "batch"}, output_name: {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

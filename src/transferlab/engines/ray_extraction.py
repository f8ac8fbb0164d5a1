"""The Ray engine: feature extraction and bulk prediction streamed through a Ray cluster with Ray Data.

The driver decides what to compute (the same file list and split as the local engine, minus the images whose
features are already cached) and lists paths, nothing more. On CPU one trunk actor per CPU takes batches of
paths and does everything with them: reads each file once, hashes its bytes into the same content-addressed key
the local engine uses, decodes it with the same `FeatureExtractor.prepare` and runs the frozen trunk (one ONNX
Runtime session per actor, built from the bytes of the very trunk file the local engine exports). Each actor runs
two batches at once in two threads, so one decodes while the other is in ONNX Runtime, as the local engine
overlaps them; decoded images never cross the object store. On GPU, decoding runs as separate CPU tasks feeding
PyTorch actors (the GPU must not wait for one actor's CPU). Features stream back in batches and the driver
stores them in the local feature cache, so a local run afterwards reads them, and images already cached (by
either engine) are never sent. No decoded image reaches the driver.

Faults: Ray Data retries the tasks of a lost node and restarts lost actors; a batch reaches the driver once,
and storing is idempotent anyway (keyed by content). A killed driver loses at most the batches in flight.
This module imports Ray; nothing imports it unless `--engine ray` was chosen.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import ray.data

from transferlab.core.errors import TransferlabError
from transferlab.core.files import bytes_digest, memoized_file_digest
from transferlab.data.augment import AugmentConfig
from transferlab.features.extractor import FeatureExtractor, cache_key
from transferlab.features.runtimes import (
    OnnxRuntime,
    TrunkSource,
    resolve_runtime,
    verified,
)

DECODE_BATCH = 16  # images a GPU-feeding decoding task prepares at once (~2.4 MB of 224 px uint8 images)
DECODE_CPUS = 0.25  # GPU path: several decoding tasks per CPU keep the GPU actors fed
# CPU path: two calls of an actor run at once, in two threads, so that it decodes one batch while the trunk runs
# the other (PIL and ONNX Runtime release the GIL); Ray Data queues a few more on it so it never waits for input.
CALLS_PER_ACTOR = 2
# A CPU trunk actor keeps its CPU busy but reserves half of it: Ray Data spreads the actors one per CPU across
# the nodes all the same, and when a node is lost its actors can restart on the survivors (with a whole CPU
# each, a cluster without spare CPUs could not restart them, and their retried batches would wait forever).
ACTOR_CPUS = 0.5
MAX_BLOCKS = 4096  # path blocks; more only adds scheduling overhead


def connect(address: str | None = None, quiet: bool = False) -> None:
    """Join the cluster at `address` ("auto", "HOST:PORT", "ray://...") or, with None, start a local Ray
    instance; a connection already made in this process is reused."""
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=not quiet,
                     logging_level="ERROR", configure_logging=True)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise TransferlabError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}",
                                   hint="start one with `ray start --head`, or leave out --ray-address for a local one") from None
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not quiet
    context.print_on_execution_start = False


def use_gpu(device: str) -> bool:
    """The one rule of both Ray paths (extraction here, training in `ray_train`): GPU workers when a GPU is asked
    for by name, or with "auto" when the cluster has GPUs; the driver's own CUDA says nothing about the cluster's."""
    return device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)


def trunk_actors() -> int:
    """Trunk actors to run: one per whole CPU of the cluster (at least one)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def portable(extractor: FeatureExtractor, device: str | None = None) -> FeatureExtractor:
    """A copy to ship to workers: its identity (key computed here, where the weights are) without the open
    cache, built runtime or loaded network; with `device` ("cuda" or "cpu"), running its trunk there, with that
    device's runtime, whatever this driver has (every runtime computes the same features)."""
    extractor.key  # noqa: B018  (computed on the driver, which has the weights file the key fingerprints)
    shipped = copy.copy(extractor)
    shipped._cache, shipped._runtime, shipped._trunk, shipped.quiet = None, None, None, True
    if device is not None and device != shipped.device:
        shipped.device, shipped.runtime = device, resolve_runtime("auto", device)
    return shipped


def exported_trunk(extractor: FeatureExtractor, runtime: str) -> ray.ObjectRef | None:
    """The trunk's ONNX file (exported here once, as the local engine does) in the object store; None for
    another `runtime` (the workers' PyTorch builds the network on each actor)."""
    if runtime != "onnx":
        return None
    path = extractor.onnx_path()
    if not verified(path):
        OnnxRuntime(TrunkSource(extractor.trunk, path, extractor.spec.input_size, "cpu")).export(path)
    return ray.put(path.read_bytes())


def decode_batch(batch: dict[str, np.ndarray], extractor: FeatureExtractor, augment: AugmentConfig | None,
                 view: int) -> dict[str, np.ndarray]:
    """Ray task: read, hash and decode a batch of paths; a file that fails keeps its row, with the reason."""
    size = extractor.spec.input_size
    keys, errors, images = [], [], np.zeros((len(batch["path"]), size, size, 3), np.uint8)
    for i, path in enumerate(batch["path"]):
        key, image, reason = decode_file(Path(path), extractor, augment, view)
        keys.append(key)
        errors.append(reason or "")
        if image is not None:
            images[i] = image
    return {"path": batch["path"], "key": np.array(keys, dtype=object), "error": np.array(errors, dtype=object),
            "image": images}


def decode_file(path: Path, extractor: FeatureExtractor, augment: AugmentConfig | None, view: int):
    """(cache key, uint8 image or None, reason or None): the file is read once, for its key and its pixels."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return "", None, f"{type(exc).__name__}: {exc}"
    key = cache_key(bytes_digest(data), augment, view)
    return key, *extractor.prepare_or_reason(data, key, augment)


class TrunkActor:
    """One frozen trunk per actor: the ONNX session is built once, from the driver's exported file. With `decode`
    ({"augment", "view"}) it takes batches of paths and decodes them itself (the CPU path); without, batches
    already decoded by `decode_batch` tasks (the GPU path)."""

    def __init__(self, extractor: FeatureExtractor, trunk_ref: list, threads: int = 1, decode: dict | None = None):
        self.extractor, self.decode = extractor, decode
        if trunk_ref[0] is not None:  # in a list: Ray would otherwise resolve the reference before __init__
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(ray.get(trunk_ref[0]), options, providers=["CPUExecutionProvider"])
            source = TrunkSource(extractor.trunk, extractor.onnx_path(), extractor.spec.input_size, "cpu")
            extractor._runtime = OnnxRuntime(source, session=session)
        else:  # built now, not by the first of two concurrent calls (each would build its own)
            extractor.runner  # noqa: B018

    def prepared(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The batch with its key, error and image columns (decoded here on the CPU path)."""
        return batch if self.decode is None else decode_batch(batch, self.extractor, **self.decode)

    def features(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Features of the rows of a prepared batch that decoded; zeros in the others (they carry their error)."""
        ok = batch["error"] == ""
        vectors = self.extractor.run_batch(batch["image"][ok]) if ok.any() else None
        dim = vectors.shape[1] if vectors is not None else 1
        out = np.zeros((len(ok), dim), self.extractor.dtype)
        if vectors is not None:
            out[ok] = vectors
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.prepared(batch)
        return {"path": batch["path"], "key": batch["key"], "error": batch["error"], "feature": self.features(batch)}


def stream(paths: Sequence[str], extractor: FeatureExtractor, actor: type = TrunkActor, *,
           augment: AugmentConfig | None = None, view: int = 0, actor_args: dict | None = None,
           batch_size: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the actor's output for `paths`, as they finish (in no particular order). `actor` is constructed
    with (extractor, trunk_ref, decode, **actor_args) and is called with batches of paths on CPU (`decode` says
    how to decode them: `TrunkActor.prepared`) or of decoded images on GPU (`decode` None)."""
    gpu = use_gpu(extractor.requested_device)
    shipped = portable(extractor, "cuda" if gpu else "cpu")
    batch_size = batch_size or extractor.batch_size
    decoding = {"augment": augment, "view": view}
    if gpu:
        dataset = path_dataset(paths, DECODE_BATCH).map_batches(
            decode_batch, batch_size=DECODE_BATCH, batch_format="numpy", num_cpus=DECODE_CPUS,
            fn_kwargs={"extractor": shipped, **decoding})
        decode, resources = None, {"num_gpus": 1}
        compute = ray.data.ActorPoolStrategy(size=max(1, int(ray.cluster_resources().get("GPU", 1))))
    else:
        dataset, decode, resources = path_dataset(paths, batch_size), decoding, {"num_cpus": ACTOR_CPUS}
        compute = ray.data.ActorPoolStrategy(size=trunk_actors(), max_concurrent_calls_per_actor=CALLS_PER_ACTOR,
                                             enable_true_multi_threading=True)
    dataset = dataset.map_batches(
        actor, batch_size=batch_size, batch_format="numpy", compute=compute,
        fn_constructor_kwargs={"extractor": shipped, "trunk_ref": [exported_trunk(extractor, shipped.runtime)], "decode": decode,
                               **(actor_args or {})},
        **resources,
    )
    yield from dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)


def path_dataset(paths: Sequence[str], per_block: int) -> ray.data.Dataset:
    """The paths as a dataset of about `per_block` rows a block (a block is the unit a lost task redoes)."""
    blocks = min(MAX_BLOCKS, max(1, -(-len(paths) // per_block)))
    return ray.data.from_items([{"path": str(p)} for p in paths], override_num_blocks=blocks)


@dataclass
class RayExtraction:
    """What one distributed pass did: features computed and stored, files that failed, cache hits."""

    computed: int = 0
    cache_hits: int = 0
    failed: dict[Path, str] = field(default_factory=dict)
    seconds: float = 0.0


def extract_to_cache(extractor: FeatureExtractor, paths: Sequence[Path], *, augment: AugmentConfig | None = None,
                     view: int = 0) -> RayExtraction:
    """Compute on the cluster the features of `paths` not yet in the extractor's cache and store them there,
    under the keys a local `extractor.extract(paths, augment=..., view=...)` reads."""
    start = time.perf_counter()
    keys = [cache_key(memoized_file_digest(p), augment, view) for p in paths]  # memoized: the split hashed them
    present = extractor.cache.present(keys)
    todo = [p for p, k in zip(paths, keys) if k not in present]
    result = RayExtraction(cache_hits=len(paths) - len(todo))
    if todo:
        for batch in stream(todo, extractor, augment=augment, view=view):
            ok = batch["error"] == ""
            extractor.cache.put_many(dict(zip(batch["key"][ok], batch["feature"][ok])))
            result.computed += int(ok.sum())
            result.failed.update({Path(p): e for p, e in zip(batch["path"][~ok], batch["error"][~ok])})
    result.seconds = time.perf_counter() - start
    return result

"""Data-parallel training on a Ray cluster with Ray Train: `train --engine ray --workers N` for fine-tuning end
to end and for training from scratch.

The driver builds the network as the local strategies do (the pretrained backbone under a seeded head, or the
recipe's network from random init) and lists the split; it decodes no image. Each worker of a `TorchTrainer`
decodes its own shard of the training and validation images (`FeatureExtractor.prepare`, the local engine's
decoding) and trains a DDP replica (gloo on CPUs, NCCL on GPUs) with the local loop's epoch
(`training._train_one_epoch`). The shards have equal length (DDP pairs the workers' steps) and each worker
takes 1/N of the local batch, so a step averages the gradient of one local-sized batch. Losses and accuracies
are summed over the workers, so early stopping, best weights and history follow the local loop's rules.

Rank 0 checkpoints after every epoch into the run's checkpoint folder (beside the run folder); a rerun with the
same settings resumes from the last checkpoint, as Ray does by itself after a lost worker. The folder is removed
once training is done. Fine-tuning runs both phases on the workers: phase 1 trains the head on the frozen base
(augmented afresh in every batch, as `--end-to-end` does locally), phase 2 the unfrozen blocks with it.
This module imports Ray; nothing imports it unless `--engine ray` was chosen.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from torch import nn

from transferlab.augment import AugmentConfig
from transferlab.backbones import create_backbone
from transferlab.data import DatasetSplit
from transferlab.errors import TransferlabError
from transferlab.features import FeatureExtractor
from transferlab.heads import HeadConfig, build_head
from transferlab.options import FitConfig, TrainOptions, scratch_recipe
from transferlab.ray_engine import portable
from transferlab.strategies.augment import augment_config
from transferlab.strategies.base import Trained, make_extractor
from transferlab.strategies.finetune import Phases, finetune_config, finetune_result, unfrozen_groups, unfrozen_state_keys
from transferlab.strategies.inputs import CHANNELS_LAST, ImageBatches, decode_images
from transferlab.strategies.scratch import augmentation, feature_size
from transferlab.training import History, _train_one_epoch, class_weights, make_optimizer, predict_logits
from transferlab.trunk import Trunk

MAX_FAILURES = 3  # worker-group restarts (a lost node) before the job fails; each resumes from the last checkpoint
CHECKPOINT = "state.pt"


# -- what the workers run ----------------------------------------------------------------------------
@dataclass
class Job:
    """One distributed fit, as every worker receives it."""

    network: nn.Module  # on the CPU; the parameters that train require a gradient
    decoder: FeatureExtractor  # reads and preprocesses images as the local engine does (no network inside)
    train: tuple[list[str], np.ndarray]
    validation: tuple[list[str], np.ndarray]
    augment: AugmentConfig | None
    config: FitConfig
    n_classes: int
    keep_batchnorm_frozen: bool = False


@dataclass
class Tracker:
    """training.fit's bookkeeping, kept in the checkpoint: history, best weights by validation loss, patience."""

    patience: int | None
    epochs: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict | None = None
    waited: int = 0
    stopped_early: bool = False
    diverged: bool = False

    def record(self, row: dict, module: nn.Module) -> None:
        self.epochs.append(row)
        if not math.isfinite(row["loss"]):
            self.diverged = True
        elif row["val_loss"] < self.best_loss - 1e-6:
            self.best_loss, self.best_epoch, self.waited = row["val_loss"], row["epoch"], 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            self.waited += 1
            self.stopped_early = self.patience is not None and self.waited >= self.patience

    def done(self, epochs: int) -> bool:
        return self.diverged or self.stopped_early or len(self.epochs) >= epochs


class FrozenBase(nn.Module):
    """The pretrained base as phase 1 sees it: inference mode and no gradients, whatever mode the loop sets."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk

    def train(self, mode: bool = True) -> FrozenBase:
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.trunk(images)


def worker_loop(settings: dict) -> None:
    """Ray Train's per-worker function: read this worker's shard, train its replica, checkpoint every epoch."""
    job: Job = ray.get(settings["job"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(job.config.seed + rank)
    images, labels, failed = read_shard(job.decoder, *job.train, rank, world)
    val_images, val_labels, val_failed = read_shard(job.decoder, *job.validation, rank, world)
    failed = gathered({**failed, **val_failed})
    if len(images) == 0:
        raise TransferlabError(f"worker {rank} has no training image: fewer images than workers")
    steps = int(reduced([len(images)], device, dist.ReduceOp.MAX)[0])
    indices = torch.arange(steps) % len(images)  # equal-length shards: every worker takes the same steps
    network = ray.train.torch.prepare_model(job.network.to(memory_format=CHANNELS_LAST))
    module = getattr(network, "module", network)  # DDP's wrapped module (one worker: no wrapper)
    optimizer = make_optimizer(job.config.optimizer, [p for p in network.parameters() if p.requires_grad],
                               job.config.lr, job.config.weight_decay)
    weight = class_weights(job.train[1], job.n_classes, job.config.class_weight)
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device))
    tracker = resumed(module, optimizer) or Tracker(job.config.patience)
    batches, batch_size = ImageBatches(images, job.augment), -(-job.config.batch_size // world)
    while not tracker.done(job.config.epochs):
        epoch, started = len(tracker.epochs) + 1, time.perf_counter()
        # seeded by epoch and rank, so a resumed run shuffles and augments as an uninterrupted one
        generator = torch.Generator().manual_seed(job.config.seed + 7919 * rank + 104729 * epoch)
        loss, accuracy = _train_one_epoch(network, indices, torch.from_numpy(labels)[indices], batch_size, optimizer,
                                          loss_fn, generator, batches, job.keep_batchnorm_frozen, device, lambda: None)
        loss, accuracy = (value / world for value in reduced([loss, accuracy], device))
        val_loss, val_accuracy = evaluate(module, val_images, val_labels, device)
        tracker.record({"epoch": epoch, "loss": loss, "accuracy": accuracy, "val_loss": val_loss,
                        "val_accuracy": val_accuracy, "seconds": time.perf_counter() - started}, module)
        report(tracker, module, optimizer, failed, rank)


def read_shard(decoder: FeatureExtractor, paths: list[str], labels: np.ndarray, rank: int, world: int):
    """This worker's images (every world-th, from its rank), decoded; (images, labels, failed)."""
    mine = [Path(p) for p in paths[rank::world]]
    images, failed = decode_images(decoder, mine, "decoding", quiet=True)
    kept = np.array([p not in failed for p in mine], dtype=bool)
    return images, np.asarray(labels[rank::world], dtype=np.int64)[kept], {str(p): r for p, r in failed.items()}


def reduced(values: list[float], device: torch.device, op=dist.ReduceOp.SUM) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(tensor, op)
    return tensor.tolist()


def gathered(failed: dict[str, str]) -> dict[str, str]:
    """Every worker's failed files (each worker reads only its shard)."""
    if not dist.is_initialized():
        return failed
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, failed)
    return {path: reason for part in parts for path, reason in part.items()}


def evaluate(module: nn.Module, images: torch.Tensor, labels: np.ndarray, device) -> tuple[float, float]:
    """Validation loss and accuracy over every worker's shard (sums reduced, then divided)."""
    targets = torch.from_numpy(labels)
    if len(images):
        logits = predict_logits(module, images, device=str(device))
        loss, correct = float(nn.functional.cross_entropy(logits, targets, reduction="sum")), float((logits.argmax(1) == targets).sum())
    else:
        loss, correct = 0.0, 0.0
    loss, correct, count = reduced([loss, correct, float(len(targets))], device)
    return loss / max(count, 1), correct / max(count, 1)


def report(tracker: Tracker, module: nn.Module, optimizer, failed: dict[str, str], rank: int) -> None:
    """Every worker reports the epoch; rank 0 attaches the checkpoint (all ranks hold the same weights)."""
    metrics = {key: value for key, value in tracker.epochs[-1].items()}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save({"tracker": tracker, "network": module.state_dict(), "optimizer": optimizer.state_dict(),
                    "failed": failed}, Path(folder) / CHECKPOINT)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def resumed(module: nn.Module, optimizer) -> Tracker | None:
    """The state of the last checkpoint (a restarted worker group, or a rerun of the same run), loaded."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    saved = load_checkpoint(checkpoint)
    module.load_state_dict(saved["network"])
    optimizer.load_state_dict(saved["optimizer"])
    return saved["tracker"]


def load_checkpoint(checkpoint: ray.train.Checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT, map_location="cpu", weights_only=False)  # our own file


# -- the driver --------------------------------------------------------------------------------------
@dataclass
class Placement:
    """Where a run's fits go: `workers` Ray Train workers (GPUs or one CPU each), checkpoints under `folder`."""

    workers: int
    folder: Path
    use_gpu: bool

    def fit(self, phase: str, job: Job) -> tuple[History, dict[Path, str]]:
        """Train `job.network` on the cluster; its best epoch's weights are loaded back into it. A phase already
        finished by an earlier attempt of the same run is read back instead."""
        done = self.folder / f"{phase}.done.pt"
        if done.is_file():
            saved = torch.load(done, map_location="cpu", weights_only=False)
        else:
            saved = self.train(phase, job)
            torch.save(saved, done)
        job.network.load_state_dict(saved["state"])
        job.network.cpu().eval()
        return saved["history"], {Path(p): reason for p, reason in saved["failed"].items()}

    def train(self, phase: str, job: Job) -> dict:
        from ray.train.torch import TorchConfig, TorchTrainer

        started = time.perf_counter()
        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"job": ray.put(job)},
            torch_config=TorchConfig(backend="nccl" if self.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu,
                                                   resources_per_worker=None if self.use_gpu else {"CPU": 1}),
            run_config=ray.train.RunConfig(
                name=phase, storage_path=str(self.folder.resolve()),
                failure_config=ray.train.FailureConfig(max_failures=MAX_FAILURES),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            ),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise TransferlabError(f"training on the Ray cluster failed: {reason}",
                                   hint=f"rerun the same command to resume from the last checkpoint in {self.folder}") from None
        saved = load_checkpoint(result.checkpoint)
        tracker: Tracker = saved["tracker"]
        if tracker.diverged:
            raise TransferlabError(f"the training loss became {tracker.epochs[-1]['loss']} in epoch {len(tracker.epochs)}: "
                                   "training diverged", hint="lower the learning rate (--lr)")
        history = History(epochs=tracker.epochs, best_epoch=tracker.best_epoch, stopped_early=tracker.stopped_early,
                          seconds=time.perf_counter() - started)
        return {"state": tracker.best_state or saved["network"], "history": history, "failed": saved["failed"]}


def train(strategy: str, split: DatasetSplit, options: TrainOptions, *, workers: int | None,
          checkpoints: Path) -> Trained:
    """`strategy` (finetune end to end, or scratch) trained data-parallel; `checkpoints` is the run's checkpoint
    folder, removed once training is done."""
    use_gpu = options.device.startswith("cuda") or (options.device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)
    workers = workers or max(1, int(ray.cluster_resources().get("GPU" if use_gpu else "CPU", 1)))
    if len(split.train) < workers:
        raise TransferlabError(f"{workers} workers need at least as many training images (there are {len(split.train)})",
                               hint="use fewer --workers")
    placement = Placement(workers, checkpoints / fingerprint(strategy, split, options), use_gpu)
    placement.folder.mkdir(parents=True, exist_ok=True)
    trained = (finetune if strategy == "finetune" else scratch)(split, options, placement)
    trained.extra = {**trained.extra, "engine": "ray", "workers": workers}
    shutil.rmtree(checkpoints, ignore_errors=True)
    return trained


def fingerprint(strategy: str, split: DatasetSplit, options: TrainOptions) -> str:
    """Names a run's checkpoints by what it trains, so only a rerun of the same run resumes from them."""
    settings = {k: v for k, v in options.to_dict().items() if k not in ("quiet", "log_epochs")}
    files = {name: [[str(p) for p in subset.paths], subset.labels.tolist()] for name, subset in split.subsets().items()}
    text = json.dumps([strategy, settings, files], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shards(split: DatasetSplit) -> tuple[tuple[list[str], np.ndarray], tuple[list[str], np.ndarray]]:
    return tuple(([str(p) for p in s.paths], np.asarray(s.labels, dtype=np.int64)) for s in (split.train, split.validation))


def new_head(options: TrainOptions, trunk: Trunk, input_size: int, n_classes: int, *,
             seed: int | None) -> tuple[nn.Module, HeadConfig]:
    """The head the local strategy builds: phase 1's is seeded afresh (train_head), scratch's is not."""
    config = HeadConfig(options.head, feature_size(trunk, input_size), n_classes, options.hidden, options.dropout)
    if seed is not None:
        torch.manual_seed(seed)
    return build_head(config), config


def finetune(split: DatasetSplit, options: TrainOptions, placement: Placement) -> Trained:
    """strategies.finetune's end-to-end path with both phases on the workers."""
    if options.layer is not None:
        raise TransferlabError("--layer cannot be combined with fine-tuning", hint="drop --layer")
    extractor = make_extractor(options)
    model = create_backbone(options.backbone, weights=options.weights, cache_dir=options.cache_dir)
    keys = unfrozen_state_keys(model, unfrozen_groups(model, options.unfreeze))
    trunk = Trunk(model, extractor.spec.mean, extractor.spec.std)
    head, head_config = new_head(options, trunk, extractor.spec.input_size, len(split.classes), seed=options.fit.seed)
    model.requires_grad_(False)
    decoder, n_classes, views = portable(extractor), len(split.classes), augment_config(options)
    first, failed = placement.fit("phase1", Job(nn.Sequential(FrozenBase(trunk), head), decoder, *shards(split),
                                                views, options.fit, n_classes))
    split = split.without(failed) if failed else split
    first_head = copy.deepcopy(head)
    trainable = set(keys)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    second, _ = placement.fit("phase2", Job(nn.Sequential(trunk, head), decoder, *shards(split), views,
                                            finetune_config(options), n_classes, keep_batchnorm_frozen=True))
    state = model.state_dict()
    phases = Phases(head_config, first_head, first, head, second, {key: state[key] for key in keys})
    return finetune_result(split, options, phases, extractions=[], extra={"finetune_path": "end-to-end"})


def scratch(split: DatasetSplit, options: TrainOptions, placement: Placement) -> Trained:
    """strategies.scratch on the workers (featurewise statistics would need every image on the driver)."""
    if options.layer is not None:
        raise TransferlabError("--layer cannot be combined with training from scratch", hint="drop --layer")
    config = augmentation(options)
    if config.featurewise_center or config.featurewise_std_normalization or config.zca_whitening:
        raise TransferlabError("featurewise standardisation is not available with --engine ray",
                               hint="use --engine local, or an augmentation without featurewise statistics")
    decoder = make_extractor(options, pretrained=False)
    torch.manual_seed(options.fit.seed)
    model = create_backbone(options.backbone, pretrained=False)
    trunk = Trunk(model, decoder.mean, decoder.std)
    head, head_config = new_head(options, trunk, decoder.spec.input_size, len(split.classes), seed=None)
    history, failed = placement.fit("scratch", Job(nn.Sequential(trunk, head), portable(decoder), *shards(split),
                                                   config, options.fit, len(split.classes)))
    split = split.without(failed) if failed else split
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    extractor = make_extractor(options, pretrained=False, backbone_state=state)
    extra = {"augment_key": config.key(), "recipe": scratch_recipe(options.recipe).name}
    return Trained(extractor, head, head_config, history, split, extra=extra)

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
import gc
import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import torch
import torch.distributed as dist
from torch import nn

from transferlab.backbones.registry import create_backbone, keras_init
from transferlab.backbones.trunk import Trunk
from transferlab.core.config import FitConfig, TrainOptions, scratch_recipe
from transferlab.core.errors import TransferlabError
from transferlab.data.augment import AugmentConfig
from transferlab.data.dataset import DatasetSplit
from transferlab.engines.ray_extraction import portable, use_gpu
from transferlab.features.extractor import FeatureExtractor
from transferlab.model.heads import HeadConfig, build_head
from transferlab.model.training import (
    Tracker,
    _train_one_epoch,
    class_weights,
    make_scheduler,
    predict_logits,
    torch_optimizer,
)
from transferlab.strategies.augment import augment_config
from transferlab.strategies.base import Trained, make_extractor
from transferlab.strategies.finetune import (
    Phases,
    finetune_config,
    finetune_result,
    unfrozen_groups,
    unfrozen_state_keys,
)
from transferlab.strategies.inputs import CHANNELS_LAST, ImageBatches, decode_images
from transferlab.strategies.scratch import (
    augmentation,
    feature_size,
    featurewise_normalization,
)

MAX_FAILURES = 3  # worker-group restarts (a lost node) before the job fails; each resumes from the last checkpoint
CHECKPOINT = "state.pt"
FEATUREWISE_SAMPLE = 1000  # training images whose per-channel statistics standardise a from-scratch network's input


# -- what the workers run ----------------------------------------------------------------------------
@dataclass
class Phase:
    """One training phase. `unfreeze`: the backbone's parameter names that train from this phase on, the trunk
    taken out of its FrozenBase (fine-tuning's phase 2); None keeps the previous phase's network."""

    config: FitConfig
    keep_batchnorm_frozen: bool = False
    unfreeze: tuple[str, ...] | None = None


@dataclass
class Job:
    """One distributed training, as every worker receives it: its phases run in one worker group, on images
    each worker decodes once."""

    network: nn.Module  # on the CPU; the parameters that train in phase 1 require a gradient
    decoder: FeatureExtractor  # reads and preprocesses images as the local engine does (no network inside)
    train: tuple[list[str], np.ndarray]
    validation: tuple[list[str], np.ndarray]
    augment: AugmentConfig | None
    n_classes: int
    phases: list[Phase]


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


def advanced(network: nn.Module, finished: Tracker, phase: Phase) -> nn.Module:
    """The next phase's network: the finished phase's best weights, changed as `phase` says."""
    network.load_state_dict(finished.best_state)
    if phase.unfreeze is None:
        return network
    trunk, head = network[0].trunk, network[1]
    trainable = set(phase.unfreeze)
    for name, parameter in trunk.model.named_parameters():
        parameter.requires_grad_(name in trainable)
    return nn.Sequential(trunk, head)


@dataclass
class Shard:
    """One worker's images, decoded once for every phase."""

    images: torch.Tensor
    labels: np.ndarray
    val_images: torch.Tensor
    val_labels: np.ndarray
    failed: dict[str, str]  # every worker's failures (gathered)


def worker_loop(settings: dict) -> None:
    """Ray Train's per-worker function: read this worker's shard, then train the phases not yet done."""
    job: Job = ray.get(settings["job"])
    rank = ray.train.get_context().get_world_rank()
    world = ray.train.get_context().get_world_size()
    images, labels, failed = read_shard(job.decoder, *job.train, rank, world)
    val_images, val_labels, val_failed = read_shard(job.decoder, *job.validation, rank, world)
    if len(images) == 0:
        raise TransferlabError(f"worker {rank} has no training image: fewer images than workers")
    shard = Shard(images, labels, val_images, val_labels, gathered({**failed, **val_failed}))
    saved = resumed()
    done: list[Tracker] = saved["done"] if saved else []
    network = job.network
    for finished, phase in zip(done, job.phases[1:]):
        network = advanced(network, finished, phase)
    for number in range(len(done), len(job.phases)):
        tracker = train_phase(job, number, network, shard, done, saved if saved and saved["phase"] == number else None)
        if tracker.diverged:
            return
        done.append(tracker)
        gc.collect()  # the finished phase's DDP wrapper goes, with the gradient hooks it put on the head
        if number + 1 < len(job.phases):
            network = advanced(network, tracker, job.phases[number + 1])


def train_phase(job: Job, number: int, network: nn.Module, shard: Shard, done: list[Tracker],
                saved: dict | None) -> Tracker:
    """One phase on this worker's DDP replica; checkpoints after every epoch."""
    phase, device = job.phases[number], ray.train.torch.get_device()
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.manual_seed(phase.config.seed + rank)
    steps = int(reduced([len(shard.images)], device, dist.ReduceOp.MAX)[0])
    indices = torch.arange(steps) % len(shard.images)  # equal-length shards: every worker takes the same steps
    replica = ray.train.torch.prepare_model(network.to(memory_format=CHANNELS_LAST))
    module = getattr(replica, "module", replica)  # DDP's wrapped module (one worker: no wrapper)
    # torch.optim (not PlainAdam): the checkpoint keeps the optimizer's state_dict
    optimizer = torch_optimizer(phase.config.optimizer, [p for p in replica.parameters() if p.requires_grad],
                                phase.config.lr, phase.config.weight_decay)
    weight = class_weights(job.train[1], job.n_classes, phase.config.class_weight)
    loss_fn = nn.CrossEntropyLoss(weight=None if weight is None else weight.to(device),
                                  label_smoothing=phase.config.label_smoothing)
    tracker = Tracker.of(phase.config)
    batches, batch_size = ImageBatches(shard.images, job.augment), -(-phase.config.batch_size // world)
    # built before the optimizer's state is restored: the schedule's peak is each group's configured rate
    scheduler = make_scheduler(optimizer, phase.config, -(-steps // batch_size))
    if saved is not None:
        module.load_state_dict(saved["network"])
        optimizer.load_state_dict(saved["optimizer"])
        tracker = saved["tracker"].replanned(phase.config)
        if scheduler is not None:  # the step reached, on this run's schedule (which may now be longer)
            scheduler.last_epoch = saved["scheduler"]["last_epoch"]
    while not tracker.done():
        epoch, started = len(tracker.epochs) + 1, time.perf_counter()
        # seeded by phase, epoch and rank, so a resumed run shuffles and augments as an uninterrupted one
        generator = torch.Generator().manual_seed(phase.config.seed + 7919 * rank + 104729 * epoch + 15485863 * number)
        loss, accuracy = _train_one_epoch(replica, indices, torch.from_numpy(shard.labels)[indices], batch_size,
                                          optimizer, loss_fn, generator, batches, phase.keep_batchnorm_frozen, device,
                                          scheduler.step if scheduler is not None else lambda: None)
        loss, accuracy = (value / world for value in reduced([loss, accuracy], device))
        val_loss, val_accuracy = evaluate(module, shard.val_images, shard.val_labels, device)
        tracker.record({"epoch": epoch, "loss": loss, "accuracy": accuracy, "val_loss": val_loss,
                        "val_accuracy": val_accuracy, "seconds": time.perf_counter() - started}, module)
        report({"phase": number, "done": done, "tracker": tracker, "network": module.state_dict(),
                "optimizer": optimizer.state_dict(), "failed": shard.failed,
                "scheduler": scheduler.state_dict() if scheduler is not None else None}, rank)
    return tracker


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


def report(state: dict, rank: int) -> None:
    """Every worker reports the epoch; rank 0 attaches the checkpoint (all ranks hold the same weights)."""
    metrics = {"phase": state["phase"], **state["tracker"].epochs[-1]}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / CHECKPOINT)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))


def resumed() -> dict | None:
    """The last checkpoint (of a restarted worker group, or of an earlier attempt at the same run)."""
    checkpoint = ray.train.get_checkpoint()
    return load_checkpoint(checkpoint) if checkpoint is not None else None


def load_checkpoint(checkpoint: ray.train.Checkpoint) -> dict:
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / CHECKPOINT, map_location="cpu", weights_only=False)  # our own file


# -- the driver --------------------------------------------------------------------------------------
@dataclass
class Placement:
    """Where a run trains: `workers` Ray Train workers (GPUs or one CPU each), checkpoints under `folder`."""

    workers: int
    folder: Path
    use_gpu: bool

    def run(self, job: Job) -> tuple[list[Tracker], dict[Path, str]]:
        """Every phase of `job` on the cluster: each phase's tracker (history, best weights) and the files that
        failed to decode. A rerun with the same `folder` resumes from the last checkpoint."""
        from ray.train.torch import TorchConfig, TorchTrainer

        trainer = TorchTrainer(
            worker_loop,
            train_loop_config={"job": ray.put(job)},
            torch_config=TorchConfig(backend="nccl" if self.use_gpu else "gloo"),
            scaling_config=ray.train.ScalingConfig(num_workers=self.workers, use_gpu=self.use_gpu,
                                                   resources_per_worker=None if self.use_gpu else {"CPU": 1}),
            run_config=ray.train.RunConfig(
                name="train", storage_path=str(self.folder.resolve()),
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
        trackers = [*saved["done"], saved["tracker"]]
        if trackers[-1].diverged:
            raise TransferlabError(f"the training loss became {trackers[-1].epochs[-1]['loss']} in epoch "
                                   f"{len(trackers[-1].epochs)}: training diverged", hint="lower the learning rate (--lr)")
        return trackers, {Path(p): reason for p, reason in saved["failed"].items()}


def train_on_ray(strategy: str, split: DatasetSplit, options: TrainOptions, *, workers: int | None,
          checkpoints: Path) -> Trained:
    """`strategy` (finetune end to end, or scratch) trained data-parallel; `checkpoints` is the run's checkpoint
    folder, removed once training is done."""
    gpu = use_gpu(options.device)
    workers = workers or max(1, int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1)))
    if len(split.train) < workers:
        raise TransferlabError(f"{workers} workers need at least as many training images (there are {len(split.train)})",
                               hint="use fewer --workers")
    placement = Placement(workers, checkpoints / fingerprint(strategy, split, options), gpu)
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
    """strategies.finetune's end-to-end path with both phases on the workers (one worker group)."""
    extractor = make_extractor(options)
    model = create_backbone(options.backbone, weights=options.weights, cache_dir=options.cache_dir)
    keys = unfrozen_state_keys(model, unfrozen_groups(model, options.unfreeze))
    trunk = Trunk(model, extractor.spec.mean, extractor.spec.std)
    head, head_config = new_head(options, trunk, extractor.spec.input_size, len(split.classes), seed=options.fit.seed)
    model.requires_grad_(False)
    trainable = tuple(name for name, _ in model.named_parameters() if name in set(keys))
    # phase 2 takes the local end-to-end recipe (AdamW, one-cycle, label smoothing) but one learning rate for
    # every block: discriminative rates are not wired through DDP's wrapped parameter names yet
    phases = [Phase(options.fit), Phase(finetune_config(options, end_to_end=True, n_train=len(split.train)),
                                        keep_batchnorm_frozen=options.batchnorm == "frozen", unfreeze=trainable)]
    job = Job(nn.Sequential(FrozenBase(trunk), head), portable(extractor), *shards(split), augment_config(options),
              len(split.classes), phases)
    started = time.perf_counter()
    (first, second), failed = placement.run(job)
    network = advanced(job.network, first, phases[1])
    first_head = copy.deepcopy(head)
    network.load_state_dict(second.best_state)
    network.cpu().eval()
    split = split.without(failed) if failed else split
    state = model.state_dict()
    seconds = time.perf_counter() - started  # shared by the phases as their epochs' time is (startup included)
    share = sum(first.column("seconds")) / max(sum(first.column("seconds")) + sum(second.column("seconds")), 1e-9)
    phases = Phases(head_config, first_head, first.history(seconds * share), head, second.history(seconds * (1 - share)),
                    {key: state[key] for key in keys})
    return finetune_result(split, options, phases, extractions=[], extra={"finetune_path": "end-to-end"})


def scratch(split: DatasetSplit, options: TrainOptions, placement: Placement) -> Trained:
    """strategies.scratch on the workers; featurewise statistics come from a sample decoded on the driver."""
    config = augmentation(options)
    if config.zca_whitening:
        raise TransferlabError("ZCA whitening is not available with --engine ray",
                               hint="use --engine local, or an augmentation without zca_whitening")
    decoder = make_extractor(options, pretrained=False)
    normalization = sampled_normalization(split, config, decoder, options)
    torch.manual_seed(options.fit.seed)
    model = create_backbone(options.backbone, pretrained=False)
    trunk = Trunk(model, *(normalization or (decoder.mean, decoder.std)))
    head, head_config = new_head(options, trunk, decoder.spec.input_size, len(split.classes), seed=None)
    network = nn.Sequential(trunk, keras_init(head))  # as the local scratch strategy does
    started = time.perf_counter()
    (tracker,), failed = placement.run(Job(network, portable(decoder), *shards(split), config, len(split.classes),
                                             [Phase(options.fit)]))
    network.load_state_dict(tracker.best_state)
    network.cpu().eval()
    split = split.without(failed) if failed else split
    state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    extractor = make_extractor(options, pretrained=False, backbone_state=state, normalization=normalization)
    extra = {"augment_key": config.key(), "recipe": scratch_recipe(options.recipe).name}
    history = tracker.history(time.perf_counter() - started)
    return Trained(extractor, head, head_config, history, split, extra=extra)


def sampled_normalization(split: DatasetSplit, config: AugmentConfig, decoder: FeatureExtractor,
                          options: TrainOptions) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Featurewise statistics from a random sample of at most FEATUREWISE_SAMPLE training images decoded on the
    driver (the workers hold the images; a per-channel mean and std need only a sample: Keras' fit() too)."""
    if not (config.featurewise_center or config.featurewise_std_normalization):
        return None
    rows = np.random.default_rng(options.fit.seed).permutation(len(split.train))[:FEATUREWISE_SAMPLE]
    images, _ = decode_images(decoder, [split.train.paths[i] for i in sorted(rows)], "featurewise statistics",
                              options.quiet)
    return featurewise_normalization(images, config, decoder)

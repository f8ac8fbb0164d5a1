"""What `auto` weighs and what each candidate costs on the device it runs on.

The candidates depend on the device: on a GPU, where a training step costs little more than inference, whole
networks fine-tuned end to end (lite0, lite1, lite2) join the heads on cached features of one backbone or
several; on a CPU, heads on cached features come first and fine-tuning gets a place only where the estimate says
it fits the budget (a small set, a generous budget).

The estimates start from throughput measured at the start on this device (`measure_throughput`: a few batches of
lite0 through its frozen trunk, real images decoded, and a few training steps of the whole network, a few
seconds in all), scaled by FLOPs to the other backbones, and are corrected as candidates run (each backbone's
own extraction speed, a run's cost besides extraction, the cross-validation's head fits). Features already in
the cache (an earlier run on the same images) cost nothing to extract.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from transferlab.backbones.registry import create_backbone, get_spec
from transferlab.core.config import TrainOptions
from transferlab.core.device import resolve_device
from transferlab.core.files import memoized_file_digest
from transferlab.features.extractor import cache_key
from transferlab.model.selection import FOLDS
from transferlab.model.training import autocast, on_real_gpu
from transferlab.strategies.base import make_extractor
from transferlab.strategies.finetune import phase2_batch_size

LITE = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Measured once with torch.utils.flop_counter on the trunks (2 FLOPs per multiply-add), at each backbone's input size.
GFLOPS_PER_IMAGE = {"efficientnet_lite0": 0.77, "efficientnet_lite1": 1.20, "efficientnet_lite2": 1.72}
PRIOR_SECONDS_PER_GFLOP = 1 / 60.0  # lite0 at ~80 img/s end to end on a 2-core CPU, when nothing is measured
RUN_SECONDS = 10.0  # a run's cost besides extraction (head, test predictions, run folder, report) until measured
# Costs relative to one image through a backbone's plain (cached) extraction, measured on Caltech-101/97 with
# lite0 on the 2-core CPU (docs/benchmarks.md, "auto within its budget"): an augmented view (decoded, augmented
# and passed through the trunk, its head trained on it), and one fine-tuning epoch of the top block from cached
# activations, per training image.
AUGMENTED_VIEW_COST = 1.3
FINETUNE_EPOCH_COST = 0.27
# One head fit on cached features, seconds per training image per 1,280 features (a lite backbone's width):
# Caltech-101/97 on the 2-core CPU, lite0 MLP 3.4 s and lite0+lite1+lite2 linear 14.6 s on 4,347 images.
HEAD_FIT_SECONDS = 1.1e-3
HEAD_EPOCHS = 20  # epochs of an end-to-end head (phase 1 of whole-network fine-tuning) until early stopping
FEATURE_BLOCK = 1280
PROBE_IMAGES = 8  # images per timed extraction batch (half of them per CPU training step): seconds on 2 cores
PROBE_BATCHES = 3


@dataclass(frozen=True)
class Candidate:
    strategy: str
    backbone: str
    views: int = 0  # augmented views of each training image (augment, finetune)
    head: str | None = None  # None: the default head
    unfreeze: str | None = None  # finetune: "all" for the whole network; None: the default (the top block)

    @property
    def label(self) -> str:
        return (f"{self.strategy}-{self.backbone.replace('+', '_')}" + (f"-{self.head}" if self.head else "")
                + (f"-{self.unfreeze}" if self.unfreeze else ""))

    @property
    def backbones(self) -> list[str]:
        return self.backbone.split("+")

    @property
    def cross_validated(self) -> bool:
        """A head on cached features: refitting it on k folds costs seconds, so it is chosen by cross-validation."""
        return self.strategy == "extract"

    @property
    def whole_network(self) -> bool:
        return self.strategy == "finetune" and self.unfreeze == "all"


ALL_THREE = "+".join(LITE)
HEADS_ON_FEATURES = (
    Candidate("extract", "efficientnet_lite0"),
    Candidate("extract", "efficientnet_lite2"),
    Candidate("extract", "efficientnet_lite0+efficientnet_lite2"),
    Candidate("extract", ALL_THREE),
    # a linear head on the 3,840 combined features: the best on Caltech-101/97 (95.8% vs 95.2% with the MLP)
    Candidate("extract", ALL_THREE, head="linear"),
)
CPU_CANDIDATES = (
    *HEADS_ON_FEATURES,
    Candidate("augment", "efficientnet_lite0", views=3),
    Candidate("finetune", "efficientnet_lite0", views=3),
    Candidate("finetune", "efficientnet_lite0", views=3, unfreeze="all"),  # only where the estimate says it fits
)
GPU_CANDIDATES = (
    *HEADS_ON_FEATURES,
    *(Candidate("finetune", backbone, views=3, unfreeze="all") for backbone in LITE),
)


def candidates_for(device: str) -> tuple[Candidate, ...]:
    """The candidates worth a place on this device (a resolved one: "cpu", "cuda", "cuda:1"), cheapest first."""
    return GPU_CANDIDATES if device.startswith("cuda") else CPU_CANDIDATES


@dataclass(frozen=True)
class Throughput:
    """lite0's speed on the device auto runs on, in images per second."""

    device: str  # resolved: "cpu", "cuda", ...
    extract: float  # frozen trunk, decoding included
    train: float  # whole-network training steps (forward, backward, optimizer)


def measure_throughput(options: TrainOptions, sample: list[Path], n_train: int) -> Throughput:
    """Time lite0 on this device: `sample` (a few training images) decoded, a few batches through its frozen
    trunk in the runtime extraction uses, and a few training steps of the whole network (as fine-tuning of
    `n_train` images would batch them)."""
    device = resolve_device(options.device)
    extractor = make_extractor(replace(options, backbone=LITE[0], precision="float32", quiet=True))
    started = time.perf_counter()
    images = [image for image, _ in map(extractor.prepare_or_reason, sample, map(str, sample)) if image is not None]
    decode = (time.perf_counter() - started) / max(len(images), 1)
    batch = np.stack((images * PROBE_IMAGES)[:PROBE_IMAGES]) if images else np.zeros((PROBE_IMAGES, 224, 224, 3), np.uint8)
    infer = seconds_per_image(lambda: extractor.run_batch(batch), len(batch), device)
    # decoding runs in worker threads beside the trunk: on a GPU it overlaps, on a CPU it takes the same cores
    extract = max(infer, decode / (os.cpu_count() or 1)) if device != "cpu" else infer + decode
    return Throughput(device, 1 / extract, 1 / training_seconds_per_image(options, device, n_train))


def training_seconds_per_image(options: TrainOptions, device: str, n_train: int) -> float:
    """A whole lite0 training step, per image at its input size. On a GPU the steps take the batch and the bf16
    autocast whole-network fine-tuning uses there (a GPU's images/s grow with the batch); on a CPU a few images
    at half the size (a step's cost follows the pixels), so that measuring takes seconds, not a minute."""
    on_gpu = device != "cpu"
    model = create_backbone(LITE[0], weights=options.weights, cache_dir=options.cache_dir).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size = get_spec(LITE[0]).input_size
    probe_size = size if on_gpu else size // 2
    batch = phase2_batch_size(options, end_to_end=True, n_train=n_train) if on_gpu else PROBE_IMAGES // 2
    images = torch.randn(batch, 3, probe_size, probe_size, device=device)
    if on_gpu:  # as fine-tuning runs there; on a CPU channels_last made BatchNorm several times slower here
        model, images = model.to(memory_format=torch.channels_last), images.to(memory_format=torch.channels_last)

    def step():
        optimizer.zero_grad()
        with autocast(device):
            loss = model(images).float().logsumexp(1).mean()
        loss.backward()
        optimizer.step()

    return seconds_per_image(step, len(images), device) * (size / probe_size) ** 2


def seconds_per_image(work, images: int, device: str) -> float:
    """Seconds per image of `work` on `images` images: the fastest of a few timed calls after an untimed one
    (the runtime built, kernels chosen), so that a first call's set-up or a busy moment does not count."""
    work()
    timings = []
    for _ in range(PROBE_BATCHES):
        started = time.perf_counter()
        work()
        if on_real_gpu(device):
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - started)
    return min(timings) / images


def cached_share(options: TrainOptions, backbone: str, paths: list[Path]) -> float:
    """The share of `paths` whose plain features of `backbone` are in the feature cache already."""
    extractor = make_extractor(replace(options, backbone=backbone, quiet=True))
    extractor.calibrate_on(paths)  # an int8 trunk's key names its calibration images
    keys = [cache_key(memoized_file_digest(path)) for path in paths]
    return len(extractor.cache.present(keys)) / max(len(keys), 1)


class CostModel:
    """Seconds a candidate should take: the images it still has to pass through each trunk, in plain-extraction
    equivalents, times that trunk's seconds per image, plus its training (cross-validation's head fits, or
    fine-tuning's steps), plus a run's cost besides."""

    def __init__(self, n_train: int, n_validation: int, n_test: int,
                 finetune_epochs: int = TrainOptions.finetune_epochs, throughput: Throughput | None = None,
                 cached: dict[str, float] | None = None):
        self.n_train, self.n_val, self.n_test = n_train, n_validation, n_test
        self.finetune_epochs = finetune_epochs
        self.throughput = throughput
        self.seconds_per_image: dict[str, float] = {}  # measured by a plain extraction of that backbone alone
        self.run_seconds = RUN_SECONDS
        self.head_fit_seconds = HEAD_FIT_SECONDS
        self.extracted: set[tuple[str, int]] = {(b, 0) for b, share in (cached or {}).items() if share >= 1}
        self.cached = dict(cached or {})  # backbone -> share of the images whose plain features are cached

    @property
    def n_other(self) -> int:
        return self.n_val + self.n_test

    def per_image(self, backbone: str) -> float:
        """Measured, or scaled by FLOPs from the costliest measured rate per GFLOP (lite0's from the start):
        FLOPs understate the small trunks (lite0 costs ~1.4x more per GFLOP than lite2 here), so estimates err
        on the long side."""
        if backbone in self.seconds_per_image:
            return self.seconds_per_image[backbone]
        rates = [s / GFLOPS_PER_IMAGE.get(b, 2.0) for b, s in self.seconds_per_image.items()]
        if self.throughput is not None:
            rates.append(1 / (self.throughput.extract * GFLOPS_PER_IMAGE[LITE[0]]))
        return GFLOPS_PER_IMAGE.get(backbone, 2.0) * max(rates, default=PRIOR_SECONDS_PER_GFLOP)

    def train_per_image(self, backbone: str) -> float:
        """Seconds per image of a whole-network training step, lite0's measured rate scaled by FLOPs."""
        lite0 = 1 / self.throughput.train if self.throughput else 3 * self.per_image(LITE[0])
        return lite0 * GFLOPS_PER_IMAGE.get(backbone, 2.0) / GFLOPS_PER_IMAGE[LITE[0]]

    def uncached(self, backbone: str, images: float) -> float:
        return 0.0 if (backbone, 0) in self.extracted else images * (1 - self.cached.get(backbone, 0.0))

    def images(self, candidate: Candidate, backbone: str) -> float:
        if candidate.whole_network:  # phase 1's head; its end-to-end epochs run the trunk on every image
            end_to_end = self.device != "cpu"
            views = HEAD_EPOCHS if end_to_end else candidate.views * AUGMENTED_VIEW_COST
            return self.uncached(backbone, self.n_train + self.n_other) + self.n_train * views
        if candidate.strategy == "finetune":  # its activations at the cut are its own: every image and view
            return (self.n_train * (1 + candidate.views * AUGMENTED_VIEW_COST) + self.n_other
                    + self.finetune_epochs * self.n_train * FINETUNE_EPOCH_COST)
        # heads on features: train and validation now, test only for the one chosen (in final_run)
        work = self.uncached(backbone, self.n_train + (self.n_val if candidate.cross_validated else self.n_other))
        if candidate.views and (backbone, candidate.views) not in self.extracted:
            work += self.n_train * candidate.views * AUGMENTED_VIEW_COST
        return work

    @property
    def device(self) -> str:
        return self.throughput.device if self.throughput else "cpu"

    def estimate(self, candidate: Candidate) -> float:
        """Seconds from now until the candidate is scored: cross-validated, or trained and validated."""
        seconds = sum(self.images(candidate, b) * self.per_image(b) for b in candidate.backbones)
        if candidate.cross_validated:
            return seconds + self.cross_validation(candidate)
        if candidate.whole_network:
            seconds += self.finetune_epochs * (self.n_train * self.train_per_image(candidate.backbone)
                                               + self.n_val * self.per_image(candidate.backbone))
        return seconds + self.run_seconds

    def cross_validation(self, candidate: Candidate) -> float:
        rows = (self.n_train + self.n_val) * (FOLDS - 1)  # each fold fits on the other folds' images
        return rows * self.head_fit_seconds * len(candidate.backbones)

    def final_run(self, candidate: Candidate) -> float:
        """A cross-validated candidate's run: the test features, and a run's cost besides extraction."""
        return self.run_seconds + sum(self.uncached(b, self.n_test) * self.per_image(b) for b in candidate.backbones)

    def after_training(self, candidate: Candidate) -> float:
        """What a candidate still costs once its training ends: test predictions (through a fine-tuned trunk
        they are computed afresh) and the run folder."""
        fresh = self.n_test * self.per_image(candidate.backbone) if candidate.strategy == "finetune" else 0.0
        return RUN_SECONDS + fresh

    def record_extraction(self, backbone: str, images_per_second: float) -> None:
        if images_per_second:
            self.seconds_per_image[backbone] = 1 / images_per_second

    def record_cross_validation(self, candidate: Candidate, seconds: float) -> None:
        rows = (self.n_train + self.n_val) * (FOLDS - 1) * len(candidate.backbones)
        self.head_fit_seconds = seconds / rows

    def record(self, candidate: Candidate, metrics: dict, seconds: float) -> None:
        """What a trained run says about the costs: its trunk's speed, a run's cost besides extraction."""
        if candidate.strategy == "extract":
            if len(candidate.backbones) == 1:
                self.record_extraction(candidate.backbone, metrics.get("images_per_second"))
            self.run_seconds = max(self.run_seconds, seconds - metrics["extract_seconds"])
        self.done(candidate)

    def done(self, candidate: Candidate) -> None:
        """The candidate's features are cached from now on."""
        self.extracted.update((b, 0) for b in candidate.backbones)
        if candidate.views and candidate.strategy != "finetune":
            self.extracted.update((b, candidate.views) for b in candidate.backbones)


def plan(candidates: tuple[Candidate, ...], cost: CostModel, seconds: float) -> list[tuple[Candidate, float]]:
    """The candidates that fit `seconds` if each took its estimate, in order, with their estimates: the first
    always (auto needs a model), a later one when its estimate fits what is left."""
    cost, kept, left = copy.deepcopy(cost), [], seconds
    for candidate in candidates:
        estimate = cost.estimate(candidate)
        if kept and estimate > left:
            continue
        kept.append((candidate, estimate))
        left -= estimate
        cost.done(candidate)
    return kept

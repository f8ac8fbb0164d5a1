"""Fine-tuning: a head on the frozen base first, then the top blocks of the base trained along with it.

Phase 1 is the `augment` strategy's head. Phase 2 unfreezes the top N blocks (`unfreeze`: "1" is the last
stage of the backbone plus what follows it, e.g. blocks.6 + conv_head + bn2 of EfficientNet; "all" is
everything) and trains them with the head at a low learning rate (RMSprop, as the notebooks), on augmented
images, with BatchNorm kept in inference mode.

On a CPU the frozen part dominates the cost, so by default the activations entering the first unfrozen
block are computed once for the original and K augmented views of every training image (cached on disk,
float16) and phase 2 trains only the unfrozen part from that cache: each epoch shows every image once, in
one of its views drawn at random. On a GPU (or with `end_to_end=True`), when everything is unfrozen, or when
the backbone cannot be cut cleanly, phase 2 runs end to end on images augmented afresh in every batch.

The classifier keeps the pretrained backbone plus `backbone_state`: the tensors of the unfrozen part,
named as in the full timm model's state_dict.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from transferlab.backbones.registry import create_backbone, get_spec
from transferlab.backbones.trunk import Trunk, split_backbone
from transferlab.core.config import FitConfig
from transferlab.core.errors import TransferlabError
from transferlab.core.history import History
from transferlab.data.dataset import DatasetSplit
from transferlab.features.extractor import ExtractionResult
from transferlab.model.heads import HeadConfig
from transferlab.model.training import BatchTransform, batch_scaled_lr, describe_stop, fit
from transferlab.strategies.augment import (
    augment_config,
    fit_augmented_head,
    train_head_on_views,
)
from transferlab.strategies.base import (
    Trained,
    TrainOptions,
    make_extractor,
    runs_end_to_end,
    tensors,
    training_device,
)
from transferlab.strategies.inputs import (
    CHANNELS_LAST,
    ImageBatches,
    decode_once,
    extract_views,
)

FINETUNE_OPTIMIZER = "rmsprop"  # the notebooks' choice for fine-tuning the top block from cached activations
FINETUNE_LR = 1e-5
FINETUNE_BATCH_SIZE = 32  # phase 2 trains convolutional blocks: small batches, as the notebooks
# On a GPU, batches of 32 leave the chip mostly idle (issue 23: 2.4% utilisation while fine-tuning), so end to end
# there phase 2 takes batches up to 256, as long as it still makes MIN_STEPS optimizer steps: on the digits (1257
# images, 6 epochs) batch 128 made 60 steps and lost 1.5 and 1.9 points on two of three seeds against batch 32's
# 240, batch 64's 120 were within a test image, and batch 128 over 24 epochs (240 steps) matched
# (docs/benchmarks.md). The default learning rate grows with the batch (`batch_scaled_lr`).
GPU_BATCH_SIZE = 256
MIN_STEPS = 200
# End to end (the whole network, or the top blocks on a GPU): the recipe that makes short fine-tuning work
# (fastai's fine_tune, timm's fine-tuning defaults): AdamW with weight decay, one-cycle warm-up then cosine
# decay, label smoothing, and discriminative learning rates from the top block's lr down to a tenth of it
# for the earliest block.
END_TO_END_OPTIMIZER = "adamw"
END_TO_END_LR = 1e-3
END_TO_END_WEIGHT_DECAY = 1e-2
END_TO_END_LABEL_SMOOTHING = 0.1
EARLIEST_BLOCK_LR_FRACTION = 0.1
_POOL_BATCH = 256


# -- which part is unfrozen ------------------------------------------------------------------------
def block_groups(model: torch.nn.Module) -> list[list[str]]:
    """Parameter names in forward order, one list per block (timm's coarse group_matcher), classifier left out.

    timm folds what follows the last stage (EfficientNet's conv_head/bn2, ConvNeXt's norm) into that stage.
    """
    if not hasattr(model, "group_matcher"):
        raise TransferlabError(
            f"{type(model).__name__} has no pretrained blocks to fine-tune",
            hint="use a pretrained backbone (see `transferlab backbones`), or --strategy scratch",
        )
    from timm.models import (
        group_parameters,  # timm is imported where a network is built: see transferlab.backbones.registry
    )

    classifier = model.pretrained_cfg.get("classifier") or "classifier"
    groups = group_parameters(model, model.group_matcher(coarse=True))
    kept = [[n for n in names if not n.startswith(classifier + ".")] for _, names in sorted(groups.items())]
    return [names for names in kept if names]


def unfrozen_groups(model: torch.nn.Module, unfreeze: str) -> list[list[str]]:
    """The top `unfreeze` groups ("all": every one)."""
    groups = block_groups(model)
    return groups if unfreeze == "all" else groups[-int(unfreeze) :]


def unfrozen_state_keys(model: torch.nn.Module, groups: list[list[str]]) -> list[str]:
    """state_dict keys of the unfrozen part: its parameters and the buffers (BatchNorm statistics) beside them."""
    params = {name for names in groups for name in names}
    modules = {name.rpartition(".")[0] for name in params}
    return [key for key in model.state_dict() if key in params or key.rpartition(".")[0] in modules]


def boundary_of(model: torch.nn.Module, first_param: str) -> str:
    """The block a parameter belongs to, as split_backbone names it: "blocks.6" or "layer4"."""
    first, _, rest = first_param.partition(".")
    index = rest.partition(".")[0]
    return f"{first}.{index}" if isinstance(getattr(model, first), torch.nn.Sequential) and index.isdigit() else first


class TailNet(torch.nn.Module):
    """Boundary activations (flattened or NCHW) -> pooled features, through the unfrozen part of the base."""

    def __init__(self, tail: torch.nn.Module, shape: tuple[int, ...]):
        super().__init__()
        tail.reset_classifier(0)  # the ImageNet classifier is never used and must not be trained or saved
        self.tail = tail
        self.shape = shape

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        x = activations.float().reshape(len(activations), *self.shape)
        return self.tail.forward_head(self.tail.forward_features(x), pre_logits=True)


def cached_tail(model: torch.nn.Module, boundary: str, mean, std, size: int) -> TailNet | None:
    """The part after `boundary` when cutting there computes exactly what the whole model does, else None."""
    prefix_model, tail_model = split_backbone(model, boundary)
    prefix = Trunk(prefix_model, mean, std, pool=False).eval()
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        activations = prefix(images)
        tail = TailNet(tail_model, tuple(activations.shape[1:])).eval()
        matches = torch.allclose(tail(activations), Trunk(model, mean, std).eval()(images), rtol=1e-4, atol=1e-4)
    return tail if matches else None


# -- training ---------------------------------------------------------------------------------------
def phase2_batch_size(options: TrainOptions, end_to_end: bool, n_train: int) -> int:
    """The batch asked for; else 32, or end to end on a GPU the largest of 256, 128, 64 whose epochs still make
    MIN_STEPS steps."""
    if options.finetune_batch_size is not None:
        return options.finetune_batch_size
    if not end_to_end or training_device(options) == "cpu":
        return FINETUNE_BATCH_SIZE
    batch_size = GPU_BATCH_SIZE
    while batch_size > FINETUNE_BATCH_SIZE and options.finetune_epochs * -(-n_train // batch_size) < MIN_STEPS:
        batch_size //= 2
    return batch_size


def finetune_config(options: TrainOptions, end_to_end: bool, n_train: int) -> FitConfig:
    """Phase 2's training: the notebooks' RMSprop on cached activations, the end-to-end recipe otherwise. A
    learning rate asked for is kept; the default one is scaled to the batch."""
    batch_size = phase2_batch_size(options, end_to_end, n_train)
    optimizer, default_lr = (END_TO_END_OPTIMIZER, END_TO_END_LR) if end_to_end else (FINETUNE_OPTIMIZER, FINETUNE_LR)
    phase2 = dataclasses.replace(
        options.fit, epochs=options.finetune_epochs, batch_size=batch_size, optimizer=optimizer,
        lr=options.finetune_lr or batch_scaled_lr(default_lr, optimizer, batch_size, FINETUNE_BATCH_SIZE),
    )
    if not end_to_end:
        return phase2
    return dataclasses.replace(
        phase2,
        weight_decay=END_TO_END_WEIGHT_DECAY,
        schedule="one-cycle",
        label_smoothing=END_TO_END_LABEL_SMOOTHING,
    )


def discriminative_lr_scales(
    model: torch.nn.Module, groups: list[list[str]], head: torch.nn.Module
) -> list[tuple[list[torch.nn.Parameter], float]]:
    """Each unfrozen block's share of the learning rate: 1 for the head and the top block, falling
    geometrically to EARLIEST_BLOCK_LR_FRACTION for the earliest unfrozen one (early features are generic and
    need the least change)."""
    parameters = dict(model.named_parameters())
    steps = max(len(groups) - 1, 1)
    scales = [([parameters[name] for name in names], EARLIEST_BLOCK_LR_FRACTION ** ((len(groups) - 1 - i) / steps))
              for i, names in enumerate(groups)]
    return [*scales, (list(head.parameters()), 1.0)]


def fine_tune_backbone(split: DatasetSplit, options: TrainOptions) -> Trained:
    model = create_backbone(options.backbone, weights=options.weights, cache_dir=options.cache_dir)
    groups = unfrozen_groups(model, options.unfreeze)
    if len(groups) < len(block_groups(model)) and not runs_end_to_end(options):
        boundary = boundary_of(model, groups[0][0])
        spec = get_spec(options.backbone)
        tail = cached_tail(model, boundary, spec.mean, spec.std, options.image_size or spec.input_size)
        if tail is not None:
            return train_cached(split, options, boundary, tail, unfrozen_state_keys(model, groups))
    return train_end_to_end(split, options, model, groups)


def train_cached(
    split: DatasetSplit, options: TrainOptions, boundary: str, tail: TailNet, keys: list[str]
) -> Trained:
    """Both phases from the activations at the boundary: the frozen prefix runs once per image and view."""
    extractor = make_extractor(options, until=boundary)
    train_original = extractor.extract(split.train.paths, description="activations: train")
    val = extractor.extract(split.validation.paths, description="activations: validation")
    failed = {**train_original.failed, **val.failed}
    split = split.without(failed) if failed else split
    views = extract_views(extractor, split.train.paths, augment_config(options), options.views)
    activations = torch.from_numpy(np.stack([train_original.features, *(view.features for view in views)]))
    val_inputs = tensors(val.features, split.validation)

    pooling_started = time.perf_counter()
    pooled_views = [pooled(tail, view) for view in activations]
    pooled_val = (torch.from_numpy(pooled(tail, val_inputs[0])), val_inputs[1])
    pooling_seconds = time.perf_counter() - pooling_started
    head, head_config, first = train_head_on_views(
        options, pooled_views, split.train.labels, pooled_val, len(split.classes)
    )
    first_head = copy.deepcopy(head)
    config = finetune_config(options, end_to_end=False, n_train=len(split.train))
    second = fine_tune(
        torch.nn.Sequential(tail, head), split, val_inputs, RandomView(activations), options, "fine-tuning (cached)",
        config=config, keep_batchnorm_frozen=True,
    )
    state = tail.tail.state_dict()
    return finetune_result(
        split, options, Phases(head_config, first_head, first, head, second, {key: state[key] for key in keys}),
        extractions=[train_original, val, *views],
        other_feature_seconds=pooling_seconds,
        extra={"finetune_path": "cached", "boundary": boundary, **phase2_settings(config)},
    )


def train_end_to_end(
    split: DatasetSplit, options: TrainOptions, model: torch.nn.Module, groups: list[list[str]]
) -> Trained:
    """Phase 1 as the augment strategy's head; phase 2 runs the whole network on images augmented on the fly."""
    extractor = make_extractor(options)
    fitted, train_store = fit_augmented_head(extractor, split, options)  # decoded if it ran end to end
    split, device, size = fitted.split, training_device(options), extractor.spec.input_size
    if train_store is None:
        train_store = decode_once(extractor, split.train.paths, "decoding: train", device, options.quiet)
    val_store = decode_once(extractor, split.validation.paths, "decoding: validation", device, options.quiet)
    trainable = {name for names in groups for name in names}
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in trainable)
    first_head = copy.deepcopy(fitted.head)
    config = finetune_config(options, end_to_end=True, n_train=len(split.train))
    second = fine_tune(
        torch.nn.Sequential(Trunk(model, extractor.spec.mean, extractor.spec.std), fitted.head).to(
            memory_format=CHANNELS_LAST
        ),
        split,
        (val_store.centre(size), torch.from_numpy(split.validation.labels)),
        ImageBatches(train_store, augment_config(options), size, device),
        options,
        "fine-tuning (end to end)",
        config=config,
        keep_batchnorm_frozen=options.batchnorm == "frozen",
        lr_scales=discriminative_lr_scales(model, groups, fitted.head),
    )
    state = model.state_dict()
    keys = unfrozen_state_keys(model, groups)
    return finetune_result(
        split,
        options,
        Phases(fitted.head_config, first_head, fitted.history, fitted.head, second, {key: state[key] for key in keys}),
        extractions=fitted.extractions,
        extra={"finetune_path": "end-to-end", **phase2_settings(config)},
    )


def phase2_settings(config: FitConfig) -> dict:
    """What the run folder records of phase 2's batch and learning rate, as chosen for this device and set."""
    return {"finetune_batch_size": config.batch_size, "finetune_lr_used": config.lr}


def fine_tune(
    network: torch.nn.Module,
    split: DatasetSplit,
    val: tuple[torch.Tensor, torch.Tensor],
    batch_transform: BatchTransform,
    options: TrainOptions,
    description: str,
    *,
    config: FitConfig,
    keep_batchnorm_frozen: bool,
    lr_scales: list[tuple[list[torch.nn.Parameter], float]] | None = None,
) -> History:
    """Phase 2: the training inputs are image indices that `batch_transform` turns into augmented inputs."""
    try:
        return fit(
            network,
            (torch.arange(len(split.train)), torch.from_numpy(split.train.labels)),
            val,
            config,
            n_classes=len(split.classes),
            batch_transform=batch_transform,
            keep_batchnorm_frozen=keep_batchnorm_frozen,
            lr_scales=lr_scales,
            device=training_device(options),
            quiet=options.quiet,
            log_epochs=options.log_epochs,
            description=description,
        )
    except torch.cuda.OutOfMemoryError as error:  # the large GPU batches need a GPU with the memory for them
        raise TransferlabError(
            f"the GPU ran out of memory fine-tuning in batches of {config.batch_size}",
            hint=f"pass a smaller --finetune-batch-size (e.g. {max(config.batch_size // 2, 1)})",
        ) from error


class RandomView:
    """fit()'s batch_transform: image indices -> cached activations of one of each image's views, drawn with
    fit's generator (so every epoch sees each image once, differently augmented, and runs repeat exactly)."""

    def __init__(self, views: torch.Tensor):
        self.views = views  # [n_views, n_images, ...]

    def __call__(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        chosen = torch.randint(0, len(self.views), (len(indices),), generator=generator)
        return self.views[chosen, indices]


def pooled(tail: TailNet, activations: torch.Tensor) -> np.ndarray:
    """Pooled features of the frozen (pretrained) base, computed from its boundary activations."""
    tail.eval()
    with torch.inference_mode():
        chunks = [tail(activations[i : i + _POOL_BATCH]) for i in range(0, len(activations), _POOL_BATCH)]
    return torch.cat(chunks).numpy()


@dataclass
class Phases:
    """What both phases produced. Phase 2 is kept only if it reached a lower validation loss than phase 1,
    so fine-tuning never ends worse (on validation) than the head it started from."""

    head_config: HeadConfig
    first_head: torch.nn.Module  # as phase 1 left it
    first: History
    second_head: torch.nn.Module
    second: History
    state: dict[str, torch.Tensor]  # the unfrozen tensors after phase 2

    @property
    def improved(self) -> bool:
        return best_val_loss(self.second) < best_val_loss(self.first)

    def history(self) -> History:
        """Phase 2's epochs numbered after phase 1's, so the curves show both."""
        offset = len(self.first.epochs)
        return History(
            epochs=self.first.epochs + [{**row, "epoch": row["epoch"] + offset} for row in self.second.epochs],
            best_epoch=offset + self.second.best_epoch if self.improved else self.first.best_epoch,
            stopped_early=self.second.stopped_early,
            out_of_time=self.first.out_of_time or self.second.out_of_time,
            seconds=self.first.seconds + self.second.seconds,
            stop_reason=f"head: {self.first.stop_reason}; fine-tuning: {describe_stop(self.second, offset)}",
        )


def best_val_loss(history: History) -> float:
    return history.epochs[history.best_epoch - 1]["val_loss"] if history.epochs else float("inf")


def finetune_result(
    split: DatasetSplit,
    options: TrainOptions,
    phases: Phases,
    *,
    extractions: list[ExtractionResult],
    other_feature_seconds: float = 0.0,
    extra: dict,
) -> Trained:
    """The pretrained backbone plus the fine-tuned tensors and phase 2's head when phase 2 improved, else
    phase 1's head on the untouched backbone."""
    state = {k: v.detach().clone() for k, v in phases.state.items()} if phases.improved else None
    return Trained(
        extractor=make_extractor(options, backbone_state=state),
        head=phases.second_head if phases.improved else phases.first_head,
        head_config=phases.head_config,
        history=phases.history(),
        split=split,
        extractions=extractions,
        other_feature_seconds=other_feature_seconds,
        extra={
            "views": options.views,
            "unfreeze": options.unfreeze,
            "finetune_lr": options.finetune_lr,
            "batchnorm": options.batchnorm,
            "phase1_epochs": len(phases.first.epochs),
            "finetune_improved": phases.improved,
            **extra,
        },
    )

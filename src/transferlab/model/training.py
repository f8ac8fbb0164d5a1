"""One seeded training loop for heads, fine-tuned blocks and from-scratch networks.

Keras-style history (loss/accuracy, train and validation, per epoch), class weights, and early stopping
on validation loss with the best weights restored.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from transferlab.core.config import FitConfig
from transferlab.core.errors import TransferlabError
from transferlab.core.history import History

BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# The bar redraws this often at most: per-batch redraws cost 22 s of a GPU run's profile (issue 23).
REFRESHES_PER_SECOND = 4


@dataclass
class Tracker:
    """The bookkeeping of one training loop, shared by `fit` and Ray Train's workers (which keep it in their
    checkpoints): the epochs' rows, the best weights by validation loss, patience, the deadline, and from them
    the History with why training stopped."""

    planned_epochs: int
    patience: int | None = None
    deadline: float | None = None  # a time.time() value: no epoch starts that would end after it
    epochs: list[dict] = field(default_factory=list)
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: dict | None = None  # on the CPU: a checkpoint pickles it
    waited: int = 0
    stopped_early: bool = False
    out_of_time: bool = False
    diverged: bool = False

    @classmethod
    def of(cls, config: FitConfig) -> Tracker:
        return cls(config.epochs, config.patience, config.deadline)

    def record(self, row: dict, module: nn.Module) -> None:
        """One finished epoch's row (epoch, loss, accuracy, val_loss, val_accuracy, seconds) and its weights."""
        self.epochs.append(row)
        if not math.isfinite(row["loss"]):
            self.diverged = True
        elif row["val_loss"] < self.best_loss - 1e-6:
            self.best_loss, self.best_epoch, self.waited = row["val_loss"], row["epoch"], 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            self.waited += 1
            self.stopped_early = self.patience is not None and self.waited >= self.patience
        if not self.done() and no_time_for_another(self.epochs, self.deadline):
            self.stopped_early = self.out_of_time = True

    def done(self) -> bool:
        return self.diverged or self.stopped_early or len(self.epochs) >= self.planned_epochs

    def replanned(self, config: FitConfig) -> Tracker:
        """The epochs so far, under `config`'s plan: a resumed run may ask for more epochs, another patience or a
        new deadline than the attempt that wrote the checkpoint."""
        self.planned_epochs, self.patience, self.deadline = config.epochs, config.patience, config.deadline
        self.stopped_early = self.patience is not None and self.waited >= self.patience
        self.out_of_time = False
        return self

    def column(self, name: str) -> list[float]:
        return [row[name] for row in self.epochs]

    def history(self, seconds: float) -> History:
        history = History(epochs=self.epochs, best_epoch=self.best_epoch, stopped_early=self.stopped_early,
                          seconds=seconds, planned_epochs=self.planned_epochs, patience=self.patience,
                          out_of_time=self.out_of_time)
        history.stop_reason = describe_stop(history)
        return history


class PlainAdam:
    """torch.optim.Adam's update for a constant learning rate, without torch.optim.Optimizer.

    Every torch.optim.Optimizer imports torch._dynamo when it is built and on its first step (its methods are
    wrapped for torch.compile, torch 2.14), which costs 2.5-4.5 s on the 2-core VM: a large share of a warm
    `train` run whose only training is a small head. This class keeps the same state (step, exp_avg, exp_avg_sq
    per parameter, created as Adam creates them) and calls torch's own functional kernel `torch.optim.adam.adam`
    with Adam's defaults, so the weights it produces are bit-identical (tested); schedulers, which need a real
    Optimizer, and the other optimizers keep torch.optim."""

    def __init__(self, groups: list[dict], weight_decay: float) -> None:
        self.param_groups = [{"params": list(group["params"]), "lr": group["lr"]} for group in groups]
        self.weight_decay = weight_decay
        self.state: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def zero_grad(self) -> None:  # gradients set to None, as torch's default does
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        from torch.optim.adam import adam

        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if p not in self.state:  # as Adam._init_group: a CPU scalar step, zero moments
                    self.state[p] = (torch.tensor(0.0), torch.zeros_like(p, memory_format=torch.preserve_format),
                                     torch.zeros_like(p, memory_format=torch.preserve_format))
            steps, exp_avgs, exp_avg_sqs = zip(*(self.state[p] for p in params)) if params else ((), (), ())
            adam(params, [p.grad for p in params], list(exp_avgs), list(exp_avg_sqs), [], list(steps),
                 amsgrad=False, has_complex=any(torch.is_complex(p) for p in params), beta1=0.9, beta2=0.999,
                 lr=group["lr"], weight_decay=self.weight_decay, eps=1e-8, maximize=False)


def make_optimizer(name: str, groups: list[dict], lr: float, weight_decay: float, scheduled: bool = False):
    """A torch optimizer by name over parameter groups; plain (constant learning rate) Adam is `PlainAdam`, the
    same update without torch._dynamo's import."""
    if name == "adam" and not scheduled:
        return PlainAdam(groups, weight_decay)
    return torch_optimizer(name, groups, lr, weight_decay)


def batch_scaled_lr(lr: float, optimizer: str, batch_size: int, base_batch_size: int) -> float:
    """A learning rate tuned at `base_batch_size`, moved to `batch_size` as timm's train.py moves its lr_base: by
    the square root of the ratio for adaptive optimisers (the rule of Malladi et al., 2022, for Adam and
    RMSprop), linearly for SGD (Goyal et al., 2017)."""
    ratio = batch_size / base_batch_size
    return lr * (ratio if optimizer == "sgd" else math.sqrt(ratio))


def torch_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    # torch's default (foreach) kernels, not fused ones: fused Adam trains no faster on a CPU head and its first
    # construction in a process costs over a second of a warm run (docs/benchmarks.md, "fused Adam").
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay or 1e-2)
    return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)


def class_weights(labels: np.ndarray, n_classes: int, mode: str | None) -> torch.Tensor | None:
    """'balanced' weights n_samples / (n_classes * count), as scikit-learn and Keras users know them."""
    if mode is None:
        return None
    present = np.unique(labels)
    weights = np.ones(n_classes, dtype=np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.from_numpy(weights)


def freeze_batchnorm(module: nn.Module) -> None:
    """Keep BatchNorm in inference mode (running stats fixed): the fine-tuning pitfall on small data."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def predict_logits(module: nn.Module, inputs: torch.Tensor, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """Logits on the CPU; the module runs on `device`, the inputs go there a batch at a time."""
    module.eval()
    with torch.inference_mode():
        return torch.cat(
            [module(inputs[i : i + batch_size].to(device)).cpu() for i in range(0, len(inputs), batch_size)]
        )


def fit(
    module: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    config: FitConfig,
    *,
    n_classes: int,
    batch_transform: BatchTransform | None = None,
    keep_batchnorm_frozen: bool = False,
    device: str = "cpu",
    quiet: bool = False,
    log_epochs: bool = False,
    description: str = "training",
    lr_scales: Sequence[tuple[list[nn.Parameter], float]] | None = None,
) -> History:
    """Train `module` in place on (inputs, labels) tensors; returns the history, best weights restored.

    The module trains on `device` and comes back on the CPU; inputs stay where they are and go to `device`
    a batch at a time (after `batch_transform`, which may already put them there). `quiet` hides the
    progress bar; `log_epochs` prints one line per epoch instead (Keras' verbose=2). `lr_scales` gives
    parameter groups their own fraction of `config.lr` (discriminative learning rates); by default every
    parameter that requires a gradient trains at `config.lr`. Settings `config` leaves at None are
    `FitConfig.resolved`'s.
    """
    config = config.resolved()
    torch.manual_seed(config.seed)
    if on_real_gpu(device):
        torch.backends.cudnn.benchmark = True  # fixed batch shapes: let cuDNN pick its fastest kernels once
    module.to(device)
    generator = torch.Generator().manual_seed(config.seed)
    x_train, y_train = train
    x_val, y_val = val
    weight = class_weights(y_train.numpy(), n_classes, config.class_weight)
    loss_fn = nn.CrossEntropyLoss(
        weight=None if weight is None else weight.to(device), label_smoothing=config.label_smoothing
    )
    eval_loss_fn = nn.CrossEntropyLoss()
    groups = lr_scales or [([p for p in module.parameters() if p.requires_grad], 1.0)]
    optimizer = make_optimizer(
        config.optimizer, [{"params": ps, "lr": config.lr * scale} for ps, scale in groups], config.lr,
        config.weight_decay, scheduled=config.schedule != "constant",
    )
    batches = -(-len(x_train) // config.batch_size)
    scheduler = make_scheduler(optimizer, config, batches)
    tracker = Tracker.of(config)
    start = time.perf_counter()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("epoch {task.fields[epoch]}/%d" % config.epochs),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=quiet,
        refresh_per_second=REFRESHES_PER_SECOND,
    ) as progress:
        # the bar moves per batch: an end-to-end epoch on a CPU takes minutes
        task = progress.add_task(description, total=config.epochs * batches, epoch=1, stats="")
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            progress.update(task, epoch=epoch)
            loss, accuracy = _train_one_epoch(
                module, x_train, y_train, config.batch_size, optimizer, loss_fn, generator,
                batch_transform, keep_batchnorm_frozen, device, on_batch=lambda: after_batch(progress, task, scheduler),
            )
            if not math.isfinite(loss):
                raise TransferlabError(
                    f"the training loss became {loss} in epoch {epoch}: training diverged or its inputs are broken",
                    hint="lower the learning rate (--lr); if the features came from a damaged cache, delete "
                    "$TRANSFERLAB_CACHE/features and run again",
                )
            logits = predict_logits(module, x_val, device=device)
            val_loss = float(eval_loss_fn(logits, y_val))
            val_accuracy = float((logits.argmax(1) == y_val).float().mean())
            tracker.record(
                {
                    "epoch": epoch,
                    "loss": loss,
                    "accuracy": accuracy,
                    "val_loss": val_loss,
                    "val_accuracy": val_accuracy,
                    "seconds": time.perf_counter() - epoch_start,
                },
                module,
            )
            stats = f"loss {loss:.3f} acc {accuracy:.3f} val_loss {val_loss:.3f} val_acc {val_accuracy:.3f}"
            progress.update(task, stats=stats)
            if log_epochs:
                seconds = tracker.epochs[-1]["seconds"]
                progress.console.print(f"{description}: epoch {epoch}/{config.epochs} - {seconds:.1f} s - {stats}",
                                       highlight=False)
            if tracker.done():
                break
    if tracker.best_state is not None:
        module.load_state_dict(tracker.best_state)
    module.cpu().eval()
    return tracker.history(time.perf_counter() - start)


def no_time_for_another(epochs: list[dict], deadline: float | None) -> bool:
    """Whether an epoch as long as the slowest so far would end after `deadline` (None: never)."""
    return deadline is not None and time.time() + max(row["seconds"] for row in epochs) > deadline


def describe_stop(history: History, offset: int = 0) -> str:
    """"stopped early at epoch 17 (no val_loss improvement for 8 epochs), best epoch 9 kept" or "ran all 40
    epochs, best epoch 38 kept": the best weights are restored either way, so say which epoch they come from.
    `offset` numbers the epochs after an earlier phase's, as a combined history shows them."""
    if history.out_of_time:
        where = f"stopped at epoch {offset + len(history.epochs)} (the time budget ran out)"
    elif history.stopped_early:
        where = (f"stopped early at epoch {offset + len(history.epochs)} "
                 f"(no val_loss improvement for {history.patience} epochs)")
    else:
        where = f"ran all {history.planned_epochs} epochs"
    return f"{where}, best epoch {offset + history.best_epoch} kept"


def make_scheduler(optimizer: torch.optim.Optimizer, config: FitConfig, batches: int):
    """None for a constant learning rate; "one-cycle": a linear warm-up over the first 20% of the steps to each
    group's learning rate, then cosine decay (fastai's fit_one_cycle, the usual recipe for short fine-tuning)."""
    if config.schedule == "constant":
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in optimizer.param_groups],
        total_steps=config.epochs * batches,
        pct_start=0.2,
        anneal_strategy="cos",
        cycle_momentum=False,
    )


def after_batch(progress: Progress, task, scheduler) -> None:
    if scheduler is not None:
        scheduler.step()
    progress.advance(task)


def _train_one_epoch(
    module, x, y, batch_size, optimizer, loss_fn, generator, batch_transform, keep_bn_frozen, device, on_batch
):
    """Running mean of batch loss and accuracy, as Keras reports them."""
    module.train()
    if keep_bn_frozen:
        freeze_batchnorm(module)
    order = torch.randperm(len(x), generator=generator)
    # summed on the device and read once per epoch: a .item() per step would wait for the GPU at every batch
    total_loss, correct = torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        inputs, targets = x[index], y[index]
        if batch_transform is not None:
            inputs = batch_transform(inputs, generator)
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        optimizer.zero_grad()
        with autocast(device):
            logits = module(inputs)
            loss = loss_fn(logits.float(), targets)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(index)
        correct += (logits.argmax(1) == targets).sum()
        on_batch()
    seen = len(x)
    return total_loss.item() / seen, correct.item() / seen


def on_real_gpu(device: str) -> bool:
    """CUDA asked for and present (torch's own answer: a simulated GPU gets the CPU's numerics)."""
    return str(device).startswith("cuda") and torch.cuda.is_available()


def autocast(device: str):
    """bf16 autocast on a GPU (its tensor cores; no loss scaling needed, unlike fp16); full precision elsewhere."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_real_gpu(device))

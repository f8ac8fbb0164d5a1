"""Every knob of a training run, its default (stated once, here) and its validation.

Torch-free on purpose: the CLI and the API check arguments before the heavy libraries are imported, so a
typo is reported in a fraction of a second. The option records validate themselves on construction (in the
spirit of scikit-learn's parameter validation at the public edge); the code behind them trusts them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferlab.core.errors import TransferlabError

DEFAULT_BACKBONE = "efficientnet_lite0"
SCRATCH_BACKBONE = "small_cnn"  # the notebooks' small convnet
STRATEGY_NAMES = ("extract", "augment", "finetune", "scratch")
COMPARE_STRATEGIES = ("scratch", "extract", "augment", "finetune")
DEFAULT_SPLIT = (0.7, 0.15, 0.15)
OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
SCHEDULES = ("constant", "one-cycle")
MIN_IMAGE_SIZE = 32  # EfficientNet and ResNet downsample 32x: smaller inputs leave no spatial extent
BATCHNORM_MODES = ("frozen", "train")
HEADS = ("mlp", "linear")

# A dense head on cached features: batch 256 at Adam 1e-3 matched batch 32 at 3e-4 on Caltech-101/97 (test
# accuracy 94.5% vs 94.5%, mean of seeds 0-2) in a third of the time, which is most of a warm run.
HEAD_BATCH_SIZE = 256
HEAD_LR = 1e-3
# A network trained from random weights: many small steps (the notebooks: batch 20-32), the lesson's Adam 1e-3.
SCRATCH_BATCH_SIZE = 32
SCRATCH_LR = 1e-3
SCRATCH_EPOCHS = 9
DEFAULT_EPOCHS = 50
PRECISIONS = ("auto", "float32", "int8")
# Strategies whose every feature comes from the frozen trunk, which int8 may quantise; finetune and scratch
# change backbone weights, so their trunk stays float32.
INT8_STRATEGIES = ("extract", "augment")
# Backbones whose frozen trunk runs in int8 by default on a CPU (precision "auto"): those whose Caltech-101/97
# accuracy drops by at most 0.3 points with int8 features and whose cold training run gets faster. None does on
# the measured 2-core CPU (docs/benchmarks.md, "int8 extraction": calibration costs more than the trunk saves).
INT8_DEFAULT_BACKBONES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ScratchRecipe:
    """What a from-scratch baseline fixes: network (and so input size), batch size, learning rate, epochs and
    augmentation preset (optimizer Adam). Options the user gives explicitly win over the recipe's."""

    name: str
    backbone: str
    batch_size: int
    lr: float
    epochs: int
    augment: str  # an AugmentConfig preset name
    description: str
    # Keras' featurewise_center + featurewise_std_normalization: inputs standardised per channel with the training
    # images' statistics (applied to the recipe's preset; an augmentation the user gives wins as a whole).
    featurewise: bool = False


SCRATCH_RECIPES = {
    recipe.name: recipe
    for recipe in (
        # The lesson's settings at 128 px with 4x the steps (batch 32): a third of its time per epoch; inputs
        # standardised per channel (Caltech-101/97: 44.3% test vs 38.9% without, docs/benchmarks.md); 9 epochs
        # (6.7 minutes on a 2-core CPU) keep it within 10 minutes on slower machines.
        ScratchRecipe("default", SCRATCH_BACKBONE, SCRATCH_BATCH_SIZE, SCRATCH_LR, SCRATCH_EPOCHS, "none",
                      "small_cnn at 128 px, batch 32, Adam 1e-3, 9 epochs, no augmentation, inputs standardised "
                      "per channel", featurewise=True),
        # ml4a's transfer-learning lesson: image.load_img(target_size=(224, 224)), x/255, Adam (Keras' 1e-3),
        # fit(batch_size=128, epochs=10), no augmentation; it reports ~40% test on Caltech-101/97.
        ScratchRecipe("lesson", "small_cnn_224", 128, 1e-3, 10, "none",
                      "the transfer-learning lesson's baseline: 224 px, batch 128, Adam 1e-3, 10 epochs, no augmentation"),
    )
}


def scratch_recipe(name: str | None, strategy: str = "scratch") -> ScratchRecipe | None:
    """The named recipe (None: the default) for strategy scratch; None for other strategies, which take none."""
    if strategy != "scratch":
        if name is not None:
            raise TransferlabError(
                f"recipe applies to --strategy scratch only, not to strategy {strategy!r}",
                hint="drop --recipe, or use --strategy scratch",
            )
        return None
    if (name or "default") not in SCRATCH_RECIPES:
        raise TransferlabError(f"unknown recipe {name!r}", hint=f"choose one of: {', '.join(SCRATCH_RECIPES)}")
    return SCRATCH_RECIPES[name or "default"]


def default_backbone(strategy: str, recipe: str | None = None) -> str:
    """The backbone a strategy uses when none is named: the scratch recipe's small convnet for scratch."""
    chosen = scratch_recipe(recipe, strategy)
    return chosen.backbone if chosen else DEFAULT_BACKBONE


def default_fit(strategy: str, recipe: str | None = None) -> tuple[int, float, int]:
    """(batch size, learning rate, epochs) when none is given: large batches for heads on cached features, the
    recipe's settings for networks trained from scratch."""
    chosen = scratch_recipe(recipe, strategy)
    return (chosen.batch_size, chosen.lr, chosen.epochs) if chosen else (HEAD_BATCH_SIZE, HEAD_LR, DEFAULT_EPOCHS)


def parse_duration(value: str | float | int) -> float:
    """Seconds from 90, "90s", "10m" or "1.5h"."""
    text = str(value).strip().lower()
    scale = {"s": 1, "m": 60, "h": 3600}.get(text[-1:], None)
    try:
        seconds = float(text[:-1] if scale else text) * (scale or 1)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise TransferlabError(f"invalid duration {value!r}", hint="e.g. --budget 10m, 90s or 1.5h")
    return seconds


def check_strategy(name: str) -> str:
    if name not in STRATEGY_NAMES:
        raise TransferlabError(f"unknown strategy {name!r}", hint=f"choose one of: {', '.join(STRATEGY_NAMES)}")
    return name


def check_strategies(names: Iterable[str]) -> list[str]:
    """Distinct known strategy names, at least one."""
    names = list(names)
    for name in names:
        check_strategy(name)
    if not names or len(set(names)) != len(names):
        raise TransferlabError(
            "strategies must be distinct and not empty", hint=f"choose from: {', '.join(STRATEGY_NAMES)}"
        )
    return names


def split_fractions(split: str | Sequence[float]) -> tuple[float, float, float]:
    """(train, validation, test) from a sequence or a "0.7,0.15,0.15" string; each >= 0, summing to 1,
    train and validation above 0."""
    try:
        values = tuple(float(v) for v in (split.split(",") if isinstance(split, str) else split))
    except (TypeError, ValueError):
        values = ()
    valid = len(values) == 3 and min(values) >= 0 and math.isclose(sum(values), 1.0, abs_tol=1e-6)
    if not valid or values[0] == 0 or values[1] == 0:
        raise TransferlabError(
            f"invalid split fractions {split!r}: need (train, validation, test), each >= 0, summing to 1, "
            "with train and validation above 0",
            hint="e.g. --split 0.7,0.15,0.15, or 0.8,0.2,0 to test on the validation set",
        )
    return values  # type: ignore[return-value]


def check_split_csv_alone(split_csv: str | Path | None, **selection: Any) -> None:
    """split_csv fixes the classes and files: the file-selection options cannot be combined with it."""
    given = [name for name, value in selection.items() if value is not None]
    if split_csv is not None and given:
        raise TransferlabError(
            f"split_csv fixes the classes and files; {', '.join(given)} cannot be combined with it",
            hint="drop those options: the split file already reflects them",
        )


FEATUREWISE_FLAGS = ("featurewise_center", "featurewise_std_normalization", "zca_whitening")


def check_featurewise(strategy: str, augment: Any) -> None:
    """Keras' dataset-level options (featurewise centering / std normalisation / ZCA) fit a from-scratch network's
    input; a pretrained backbone expects the normalisation it was trained with, so other strategies refuse them."""
    asked = [flag for flag in FEATUREWISE_FLAGS if getattr(augment, flag, False)]
    if asked and strategy != "scratch":
        raise TransferlabError(
            f"{', '.join(asked)} apply to training from scratch only, not to strategy {strategy!r}",
            hint="a pretrained backbone expects its own ImageNet normalisation: turn them off, or use --strategy scratch",
        )


def check_verbose(verbose: int) -> int:
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise TransferlabError(f"verbose must be 0, 1 or 2, got {verbose!r}",
                               hint="0: silent, 1: progress bars, 2: one line per epoch")
    return verbose


def check_tta(tta: int) -> int:
    _at_least("--tta", tta, 1)
    return tta


def precision_for(strategy: str, precision: str) -> str:
    """The precision a strategy of a compare or auto run gets: the one asked for where int8 applies, else float32."""
    return precision if strategy in INT8_STRATEGIES else "float32"


def check_device(device: str) -> str:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise TransferlabError(f"unknown device {device!r}", hint="use auto, cpu or cuda")
    return device


def _at_least(name: str, value: Any, low: float, kind: type = int) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or value < low:
        raise TransferlabError(f"{name} must be {'a whole number ' if kind is int else ''}>= {low}, got {value!r}")


@dataclass
class FitConfig:
    """How one network or head is trained."""

    epochs: int = DEFAULT_EPOCHS
    batch_size: int = SCRATCH_BATCH_SIZE
    lr: float = SCRATCH_LR
    optimizer: str = "adam"
    weight_decay: float = 0.0
    class_weight: str | None = None  # None or "balanced"
    patience: int | None = 8  # epochs without a better validation loss before stopping; None: never stop
    seed: int = 0
    schedule: str = "constant"  # or "one-cycle": warm-up then cosine decay of the learning rate, per batch
    label_smoothing: float = 0.0
    # wall-clock time (time.time()) by which training must end, set by --strategy auto for its budget: no epoch
    # starts that would not finish by then. A moment, not a setting, so to_dict leaves it out.
    deadline: float | None = None

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise TransferlabError(f"unknown optimizer {self.optimizer!r}", hint=f"choose one of: {', '.join(OPTIMIZERS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TransferlabError(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not self.lr > 0:
            raise TransferlabError(f"learning rate must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise TransferlabError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.class_weight not in (None, "balanced"):
            raise TransferlabError(f"unknown class weight {self.class_weight!r}", hint="use 'balanced' or leave it out")
        if self.patience is not None and self.patience < 1:
            raise TransferlabError(f"patience must be >= 1, got {self.patience}")
        if self.schedule not in SCHEDULES:
            raise TransferlabError(f"unknown schedule {self.schedule!r}", hint=f"choose one of: {', '.join(SCHEDULES)}")
        if not 0 <= self.label_smoothing < 1:
            raise TransferlabError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")

    def to_dict(self) -> dict:
        values = asdict(self)
        del values["deadline"]
        return values


@dataclass
class TrainOptions:
    """Every knob a strategy reads; the API fills it from keyword arguments, the CLI from flags."""

    backbone: str = DEFAULT_BACKBONE
    layer: int | None = None
    weights: str | None = None
    head: str = "mlp"
    hidden: int = 256
    dropout: float = 0.5
    fit: FitConfig = field(default_factory=lambda: FitConfig(batch_size=HEAD_BATCH_SIZE, lr=HEAD_LR))
    device: str = "auto"
    runtime: str = "auto"  # what runs the frozen trunk: auto | onnx | torch | one registered in runtimes.RUNTIMES
    precision: str = "auto"  # of the frozen trunk: float32 | int8 (ONNX Runtime) | auto (INT8_DEFAULT_BACKBONES)
    extract_batch_size: int = 32
    cache_dir: Path | None = None
    quiet: bool = False  # no progress bars
    log_epochs: bool = False  # one line per epoch instead (verbose=2)
    views: int = 3  # augmented views per training image (augment, finetune); more cost ~50 s each on Caltech
    unfreeze: str = "1"  # top blocks to fine-tune: a number or "all"
    finetune_lr: float | None = None  # None: the fine-tuning path's own (see strategies.finetune)
    finetune_epochs: int = 10
    augment: Any = None  # an AugmentConfig; None: the strategy's default
    # augment/finetune: augment afresh every batch and run the frozen base on the fly (True), or train from
    # cached features of K views (False); None: end to end on a GPU, cached on a CPU.
    end_to_end: bool | None = None
    recipe: str | None = None  # scratch: the ScratchRecipe whose settings filled the options not given
    image_size: int | None = None  # the network's input size; None: the backbone's own
    # whole-network fine-tuning: BatchNorm statistics kept from ImageNet ("frozen") or re-estimated ("train")
    batchnorm: str = "frozen"

    def __post_init__(self):
        self.unfreeze = str(self.unfreeze)
        if self.head not in HEADS:
            raise TransferlabError(f"unknown head {self.head!r}", hint=f"choose one of: {', '.join(HEADS)}")
        _at_least("views", self.views, 1)
        _at_least("hidden", self.hidden, 1)
        _at_least("extract batch size", self.extract_batch_size, 1)
        _at_least("finetune epochs", self.finetune_epochs, 1)
        if not 0 <= self.dropout < 1:
            raise TransferlabError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise TransferlabError(f"finetune learning rate must be > 0, got {self.finetune_lr}")
        if self.unfreeze != "all" and not (self.unfreeze.isdigit() and int(self.unfreeze) >= 1):
            raise TransferlabError(
                f"--unfreeze must be a number of top blocks or 'all', got {self.unfreeze!r}", hint="e.g. --unfreeze 1"
            )
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            raise TransferlabError(f"image size must be >= {MIN_IMAGE_SIZE} pixels, got {self.image_size}")
        if self.batchnorm not in BATCHNORM_MODES:
            raise TransferlabError(f"unknown batchnorm mode {self.batchnorm!r}", hint=f"choose one of: {', '.join(BATCHNORM_MODES)}")
        check_device(self.device)

    def to_dict(self) -> dict:
        values = asdict(self)
        values["fit"] = self.fit.to_dict()
        values["cache_dir"] = str(self.cache_dir) if self.cache_dir else None
        return values


def check_data_folder(data: Path | str) -> Path:
    """The data folder, absolute; a clear error when it is missing or a file (here, torch- and sklearn-free, so
    that the CLI's preflight and `data.load_dataset` say the same)."""
    root = Path(data).expanduser().absolute()
    if not root.exists():
        raise TransferlabError(f"data folder not found: {root}",
                               hint="pass a folder with one subfolder of images per class")
    if not root.is_dir():
        raise TransferlabError(f"data must be a folder, got the file {root}",
                               hint="pass a folder with one subfolder of images per class (unpack archives first)")
    return root

"""The records a strategy reads (`FitConfig`, `TrainOptions`), the scratch recipes, the strategies' defaults and
the checks that involve more than one option.

Every option's own default and check is in the table of `core.options`, which these records read. Torch-free on
purpose: the CLI and the API check arguments before the heavy libraries are imported, so a typo is reported in a
fraction of a second. The records validate themselves on construction (in the spirit of scikit-learn's
parameter validation at the public edge); the code behind them trusts them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from transferlab.core.errors import TransferlabError

from transferlab.core.options import (  # the table's constants and checks, importable from here as before
    BATCHNORM_MODES,
    BY_KEYWORD,
    DEFAULT_BACKBONE,
    DEFAULT_SPLIT,
    HEADS,
    MIN_IMAGE_SIZE,
    OPTIMIZERS,
    OPTIONS,
    PRECISIONS,
    SCHEDULES,
    STRATEGY_NAMES,
    check_device,
    check_record,
    check_verbose,
    default,
    parse_duration,
    split_fractions,
)

SCRATCH_BACKBONE = "small_cnn"  # the notebooks' small convnet
COMPARE_STRATEGIES = ("scratch", "extract", "augment", "finetune")

# A dense head on cached features: batch 256 at Adam 1e-3 matched batch 32 at 3e-4 on Caltech-101/97 (test
# accuracy 94.5% vs 94.5%, mean of seeds 0-2) in a third of the time, which is most of a warm run.
HEAD_BATCH_SIZE = 256
HEAD_LR = 1e-3
# A network trained from random weights: many small steps (the notebooks: batch 20-32), the lesson's Adam 1e-3.
SCRATCH_BATCH_SIZE = 32
SCRATCH_LR = 1e-3
SCRATCH_EPOCHS = 9
DEFAULT_EPOCHS = 50
# Strategies whose every feature comes from the frozen trunk, which int8 may quantise and whose --layer may
# choose the stage; finetune and scratch change backbone weights, so their trunk stays whole and float32.
FROZEN_TRUNK_STRATEGIES = ("extract", "augment")
INT8_STRATEGIES = FROZEN_TRUNK_STRATEGIES
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


def check_tta(tta: int) -> int:
    return OPTIONS["tta"].check(tta)


def precision_for(strategy: str, precision: str) -> str:
    """The precision a strategy of a compare or auto run gets: the one asked for where int8 applies, else float32."""
    return precision if strategy in INT8_STRATEGIES else "float32"


def check_layer(strategy: str, layer: int | None) -> None:
    """A stage index of the frozen trunk applies where every feature comes from it: not to the strategies that
    train the backbone itself."""
    if layer is not None and strategy not in FROZEN_TRUNK_STRATEGIES:
        raise TransferlabError(
            f"--layer cannot be combined with strategy {strategy!r}: it trains the backbone itself",
            hint=f"--layer applies to {' and '.join(FROZEN_TRUNK_STRATEGIES)}; drop --layer",
        )


@dataclass(frozen=True)
class FitConfig:
    """How one network or head is trained: `transferlab.train(fit=...)`, and what the training loop reads.
    epochs, batch_size and lr left at None take the strategy's defaults (`resolved`)."""

    epochs: int | None = default("epochs")
    batch_size: int | None = default("fit.batch_size")
    lr: float | None = default("lr")
    optimizer: str = default("fit.optimizer")
    weight_decay: float = default("fit.weight_decay")
    class_weight: str | None = default("fit.class_weight")  # None or "balanced"
    patience: int | None = default("fit.patience")  # epochs without a better validation loss; None: never stop
    seed: int = default("seed")
    schedule: str = default("fit.schedule")  # or "one-cycle": warm-up then cosine decay of the rate, per batch
    label_smoothing: float = default("fit.label_smoothing")
    # wall-clock time (time.time()) by which training must end, set by --strategy auto for its budget: no epoch
    # starts that would not finish by then. A moment, not a setting, so to_dict leaves it out.
    deadline: float | None = default("fit.deadline")

    def __post_init__(self):
        check_record(self, "fit")

    def resolved(self, strategy: str | None = None, recipe: str | None = None) -> FitConfig:
        """epochs, batch size and learning rate left at None filled in: the strategy's (`default_fit`), or for a
        network handed to the training loop directly, batch 32 at 1e-3 for 50 epochs."""
        batch_size, lr, epochs = (default_fit(strategy, recipe) if strategy
                                  else (SCRATCH_BATCH_SIZE, SCRATCH_LR, DEFAULT_EPOCHS))
        return replace(self, epochs=epochs if self.epochs is None else self.epochs,
                       batch_size=batch_size if self.batch_size is None else self.batch_size,
                       lr=lr if self.lr is None else self.lr)

    def to_dict(self) -> dict:
        values = asdict(self)
        del values["deadline"]
        return values


@dataclass
class TrainOptions:
    """Every knob a strategy reads, flat and resolved; `runs.pipeline` fills it from the API's settings. Defaults
    and checks are the table's (core.options), each field under its flat name."""

    backbone: str = DEFAULT_BACKBONE
    layer: int | None = default("trunk.layer")
    weights: str | None = default("trunk.weights")
    head: str = default("head.kind")
    hidden: int = default("head.hidden")
    dropout: float = default("head.dropout")
    fit: FitConfig = field(default_factory=lambda: FitConfig().resolved("extract"))
    device: str = default("device")
    runtime: str = default("trunk.runtime")  # auto | onnx | torch | one registered in runtimes.RUNTIMES
    precision: str = default("trunk.precision")  # float32 | int8 (ONNX Runtime) | auto (INT8_DEFAULT_BACKBONES)
    extract_batch_size: int = default("trunk.extract_batch_size")
    cache_dir: Path | None = default("trunk.cache_dir")
    quiet: bool = False  # no progress bars
    log_epochs: bool = False  # one line per epoch instead (verbose=2)
    views: int = default("finetune.views")  # more cost ~50 s each on Caltech
    unfreeze: str = str(default("finetune.unfreeze"))  # top blocks to fine-tune: a number or "all"
    finetune_lr: float | None = default("finetune.lr")  # None: the fine-tuning path's own (strategies.finetune)
    finetune_epochs: int = default("finetune.epochs")
    finetune_batch_size: int | None = default("finetune.batch_size")  # None: strategies.finetune's own
    augment: Any = None  # an AugmentConfig; None: the strategy's default
    # augment/finetune: augment afresh every batch and run the frozen base on the fly (True), or train from
    # cached features of K views (False); None: end to end on a GPU, cached on a CPU.
    end_to_end: bool | None = default("finetune.end_to_end")
    recipe: str | None = None  # scratch: the ScratchRecipe whose settings filled the options not given
    image_size: int | None = default("trunk.image_size")  # the network's input size; None: the backbone's own
    # whole-network fine-tuning: BatchNorm statistics kept from ImageNet ("frozen") or re-estimated ("train")
    batchnorm: str = default("finetune.batchnorm")

    def __post_init__(self):
        for option in fields(self):
            if option.name in BY_KEYWORD:
                setattr(self, option.name, BY_KEYWORD[option.name].check(getattr(self, option.name)))
        self.unfreeze = str(self.unfreeze)
        self.fit = self.fit.resolved()

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

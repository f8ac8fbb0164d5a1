"""The one table of training options: each option's default, allowed values and help text, stated once.

`transferlab.train` reads its keyword defaults from `OPTIONS`, the config records (`FitConfig` in core.config,
the others in core.settings) take their field defaults from it and validate with it, the `train` and `compare`
commands take their flags' defaults and help from it (and their preflight checks), and config.json records the
settings under its names. `tests/test_train_settings.py` fails when any of them drifts from the table.

An option lives in a group, the config record that holds it (`fit`, `split`, ...; "" for a keyword of `train`
itself); `flat` is its command-line flag (--flat) and the keyword it had before the groups (e.g. `finetune_lr`
for finetune.lr). Standard library only: the CLI's checks run before any heavy import.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transferlab.core.errors import TransferlabError

DEFAULT_BACKBONE = "efficientnet_lite0"
STRATEGY_NAMES = ("extract", "augment", "finetune", "scratch")
DEFAULT_SPLIT = (0.7, 0.15, 0.15)
OPTIMIZERS = ("rmsprop", "adam", "adamw", "sgd")
SCHEDULES = ("constant", "one-cycle")
MIN_IMAGE_SIZE = 32  # EfficientNet and ResNet downsample 32x: smaller inputs leave no spatial extent
BATCHNORM_MODES = ("frozen", "train")
HEADS = ("mlp", "linear")
PRECISIONS = ("auto", "float32", "int8")
ENGINES = ("local", "ray")
GROUPS = ("split", "fit", "head", "trunk", "finetune", "engine")
# --strategy auto without --budget: a few minutes, enough on a 2-core CPU for the heads on lite0, lite1 and lite2
# features of a set of up to 5,000 images, and for whole-network fine-tuning on a GPU (issue 23)
DEFAULT_BUDGET = 360.0


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


def check_device(device: str) -> str:
    if not isinstance(device, str) or (device not in ("auto", "cpu") and not device.startswith("cuda")):
        raise TransferlabError(f"unknown device {device!r}", hint="use auto, cpu or cuda")
    return device


def check_verbose(verbose: int) -> int:
    if verbose not in (0, 1, 2) or isinstance(verbose, bool):
        raise TransferlabError(f"verbose must be 0, 1 or 2, got {verbose!r}",
                               hint="0: silent, 1: progress bars, 2: one line per epoch")
    return verbose


def check_unfreeze(value: int | str) -> int | str:
    """A number of top blocks (1 or more) or "all"; "2" from the command line is 2."""
    text = str(value)
    if text == "all":
        return text
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise TransferlabError(f"--unfreeze must be a number of top blocks or 'all', got {value!r}",
                               hint="e.g. --unfreeze 1")
    return int(text)


def class_names(value: Sequence[str]) -> tuple[str, ...]:
    """Class names as a tuple; one bare string is refused (it would be read letter by letter)."""
    if isinstance(value, str) or not all(isinstance(name, str) for name in value):
        raise TransferlabError(f"classes must be a list of names, got {value!r}", hint='e.g. ["cats", "dogs"]')
    return tuple(value)


@dataclass(frozen=True)
class Option:
    """One setting: where it lives, its default, what it accepts, what it means."""

    group: str  # the config record holding it (GROUPS), or "" for a keyword of `train` itself
    field: str  # its name in that record
    default: Any
    help: str
    flat: str = ""  # the command-line flag (--flat) and the old keyword of train; default: `field`
    top_level: bool = False  # a keyword of `train` although it lives in a group (epochs, lr, seed in fit)
    label: str = ""  # the words naming it in an error; default: `field` with spaces
    kind: type | tuple[type, ...] | None = None  # what a value must be (int excludes bool); None: not checked here
    choices: tuple = ()
    at_least: float | None = None
    above: float | None = None
    below: float | None = None
    nullable: bool = False  # None is allowed (always, when the default is None)
    parse: Callable[[Any], Any] | None = None  # checks and normalises instead of kind/choices/range
    cli: bool = True  # a flag of `transferlab train`

    @property
    def name(self) -> str:
        """The key in OPTIONS: the keyword for a keyword of train, else group.field."""
        return self.field if not self.group or self.top_level else f"{self.group}.{self.field}"

    @property
    def keyword(self) -> str:
        """The flat name: the command-line flag without dashes and the old keyword."""
        return self.flat or self.field

    @property
    def flag(self) -> str:
        return "--" + self.keyword.replace("_", "-")

    def check(self, value: Any, name: str | None = None) -> Any:
        """`value`, normalised (e.g. "0.8,0.2,0" -> (0.8, 0.2, 0.0)), or a one-line error naming it as `name`
        (a flag) or in words."""
        name = name or self.label or self.field.replace("_", " ")
        if value is None and (self.nullable or self.default is None):
            return None
        if self.parse is not None:
            return self.parse(value)
        if self.choices:
            if value not in self.choices:
                raise TransferlabError(f"unknown {self.label or self.field.replace('_', ' ')} {value!r}",
                                       hint=f"choose one of: {', '.join(map(str, self.choices))}")
            return value
        if self.kind is not None and not _is_kind(value, self.kind):
            raise TransferlabError(f"{name} must be {_kind_words(self.kind)}, got {value!r}")
        return self._in_range(value, name)

    def _in_range(self, value: Any, name: str) -> Any:
        low_ok = self.at_least is None or value >= self.at_least
        if self.below is not None and not (low_ok and value < self.below):
            raise TransferlabError(f"{name} must be in [{self.at_least}, {self.below}), got {value!r}")
        if not low_ok:
            raise TransferlabError(f"{name} must be at least {self.at_least}, got {value!r}")
        if self.above is not None and not value > self.above:
            raise TransferlabError(f"{name} must be above {self.above}, got {value!r}")
        return value


def _is_kind(value: Any, kind: type | tuple[type, ...]) -> bool:
    """isinstance, where int means any whole number but not a bool, and float any real number (numpy's too)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    numbers_of = {int: numbers.Integral, float: numbers.Real}
    return isinstance(value, tuple(numbers_of.get(k, k) for k in kinds))


def _kind_words(kind: type | tuple[type, ...]) -> str:
    words = {int: "a whole number", float: "a number", bool: "True or False", str: "text", os.PathLike: "a path"}
    return " or ".join(words.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))


PATH = (str, os.PathLike)
_TABLE = (
    # -- keywords of train itself
    Option("", "backbone", None, "Backbone (see `transferlab backbones`), or several joined by +; default "
           "efficientnet_lite0, the recipe's small convnet for scratch.", kind=str),
    Option("", "strategy", "extract", "extract | augment | finetune | scratch | auto (the best within --budget)",
           choices=(*STRATEGY_NAMES, "auto")),
    Option("", "recipe", None, "scratch: default (128 px, batch 32, Adam 1e-3, 9 epochs, inputs standardised per "
           "channel) | lesson (the transfer-learning lesson's baseline: 224 px, batch 128, Adam 1e-3, 10 epochs, no "
           "augmentation); --epochs, --batch-size, --lr, --augment (replacing the recipe's augmentation and "
           "standardisation), --backbone override it.", kind=str),
    Option("fit", "epochs", None, "Maximum epochs, early stopping may end sooner (default 50, the recipe's for "
           "scratch).", top_level=True, kind=int, at_least=1),
    Option("fit", "lr", None, "Learning rate (default 1e-3 for heads on cached features, the recipe's for scratch).",
           top_level=True, label="learning rate", kind=float, above=0),
    Option("", "augment", None, "Training augmentation: notebook | light | light-noflip | none, or an "
           "AugmentConfig (default: light for augment and finetune, the recipe's for scratch)."),
    Option("", "budget", None, "Time budget of --strategy auto: 90s, 10m, 1h, or seconds (default "
           f"{DEFAULT_BUDGET / 60:g}m).", parse=parse_duration),
    Option("", "out", None, "Run folder (default runs/<data>-<strategy>).", kind=PATH),
    Option("", "overwrite", False, "Replace an existing run folder at --out as a whole.", kind=bool),
    Option("", "device", "auto", "auto | cpu | cuda", parse=check_device),
    Option("fit", "seed", 0, "Seed for the split, the head and the shuffling.", top_level=True, kind=int),
    Option("", "tta", 1, "Test-time augmentation views for the evaluation (1: off); mirrored only if the training "
           "augmentation flips.", kind=int, at_least=1),
    Option("", "explain", 12, "Test images whose Grad-CAM heatmaps report.html shows: the top losses (at most "
           "half), then correct ones of each class (0: none).", kind=int, at_least=0),
    Option("", "verbose", 1, "0 silent, 1 progress bars, 2 one line per epoch (logs, CI).", parse=check_verbose,
           cli=False),
    Option("", "quiet", False, "No progress bars or summaries (as verbose=0).", kind=bool, cli=False),
    # -- split: which files, and how they are divided
    Option("split", "fractions", DEFAULT_SPLIT, "train,validation,test fractions for a folder of classes.",
           flat="split", parse=split_fractions),
    Option("split", "include", None, "Only these classes, comma-separated.", parse=class_names),
    Option("split", "exclude", None, "Leave out these classes, comma-separated.", parse=class_names),
    Option("split", "max_per_class", None, "Cap the number of images per class.", kind=int, at_least=1),
    Option("split", "split_csv", None, "Reproduce the split.csv of an earlier run.", kind=PATH),
    Option("split", "skip", None, "Leave out of training and validation the files `transferlab doctor` flagged: its "
           "findings.csv (edit it to keep some) or its folder; the test split stays whole.", kind=PATH),
    # -- fit: how the head (or the network, for scratch) is trained
    Option("fit", "batch_size", None, "Training batch size (default 256 for heads on cached features, the recipe's "
           "for scratch).", kind=int, at_least=1),
    Option("fit", "optimizer", "adam", "rmsprop | adam | adamw | sgd", choices=OPTIMIZERS),
    Option("fit", "weight_decay", 0.0, "Weight decay of the optimizer.", kind=float, at_least=0),
    Option("fit", "class_weight", None, "'balanced' to weight classes by inverse frequency.", choices=("balanced",)),
    Option("fit", "patience", 8, "Early-stopping patience on validation loss, in epochs (None, or 0 on the "
           "command line: off).", kind=int, at_least=1, nullable=True),
    Option("fit", "schedule", "constant", "constant, or one-cycle: warm-up then cosine decay, per batch.",
           choices=SCHEDULES, cli=False),
    Option("fit", "label_smoothing", 0.0, "Label smoothing of the loss.", kind=float, at_least=0, below=1, cli=False),
    Option("fit", "deadline", None, "A time.time() by which training must end (set by --strategy auto): no epoch "
           "starts that would not finish by then; one always runs.", kind=float, cli=False),
    # -- head: the classifier on top of the features
    Option("head", "kind", "mlp", "mlp (Dense --hidden + dropout --dropout) | linear", flat="head", label="head",
           choices=HEADS),
    Option("head", "hidden", 256, "Units of the mlp head's hidden layer.", kind=int, at_least=1),
    Option("head", "dropout", 0.5, "Dropout before the head's output layer.", kind=float, at_least=0, below=1),
    # -- trunk: the frozen backbone that computes the features
    Option("trunk", "layer", None, "Take features from this stage index instead of the last (extract, augment).",
           kind=int),
    Option("trunk", "weights", None, "Backbone weights file (safetensors) instead of a download.", kind=PATH),
    Option("trunk", "runtime", "auto", "What runs the frozen backbone: auto (ONNX Runtime on a CPU, PyTorch on a "
           "GPU) | onnx | torch.", kind=str),
    Option("trunk", "precision", "auto", "Frozen backbone precision (extract, augment): float32 | int8 (ONNX "
           "Runtime, calibrated on training images) | auto (int8 only for backbones it costs <= 0.3 points).",
           choices=PRECISIONS),
    Option("trunk", "extract_batch_size", 32, "Images per batch through the frozen backbone.", kind=int, at_least=1,
           cli=False),
    Option("trunk", "image_size", None, "Network input size in pixels (default: the backbone's own); e.g. 96 for "
           "small images.", kind=int, at_least=MIN_IMAGE_SIZE),
    Option("trunk", "cache_dir", None, "Feature and weights cache (default: the user cache folder).", kind=PATH,
           cli=False),
    # -- finetune: augmented views and fine-tuning (augment, finetune)
    Option("finetune", "views", 3, "Augmented views per training image (augment, finetune).", kind=int, at_least=1),
    Option("finetune", "unfreeze", 1, "Top blocks to fine-tune: N or 'all'.", parse=check_unfreeze),
    Option("finetune", "lr", None, "Learning rate of the fine-tuning phase (default: RMSprop 1e-5 on cached "
           "activations, AdamW 1e-3 one-cycle end to end).", flat="finetune_lr", label="finetune learning rate",
           kind=float, above=0),
    Option("finetune", "epochs", 10, "Epochs of the fine-tuning phase.", flat="finetune_epochs",
           label="finetune epochs", kind=int, at_least=1),
    Option("finetune", "batch_size", None, "Batch size of the fine-tuning phase (default 32; end to end on a GPU "
           "up to 256 while the phase still makes 200 steps). A default learning rate grows with it (square root "
           "of the ratio to 32).", flat="finetune_batch_size", label="finetune batch size", kind=int, at_least=1),
    Option("finetune", "end_to_end", None, "augment, finetune: augment every batch afresh through the network, or "
           "train from cached views (default: end to end on a GPU, cached on a CPU).", kind=bool),
    Option("finetune", "batchnorm", "frozen", "Whole-network fine-tuning: BatchNorm statistics frozen (ImageNet's) "
           "or train (re-estimated).", label="batchnorm mode", choices=BATCHNORM_MODES),
    # -- engine: where the work runs
    Option("engine", "name", "local", "local | ray (frozen features computed on a Ray cluster into the same cache; "
           "finetune --end-to-end and scratch trained data-parallel on Ray Train; compare's strategies as parallel "
           "Ray tasks).", flat="engine", label="engine", choices=ENGINES),
    Option("engine", "ray_address", None, "Ray cluster: auto | HOST:PORT (default: start a local Ray instance).",
           kind=str),
    Option("engine", "workers", None, "--engine ray, finetune --end-to-end or scratch: Ray Train workers (default: "
           "one per CPU, or GPU, of the cluster).", kind=int, at_least=1),
)
OPTIONS: dict[str, Option] = {option.name: option for option in _TABLE}
BY_KEYWORD: dict[str, Option] = {option.keyword: option for option in _TABLE}  # flat names: flags, old keywords
TOP_LEVEL = tuple(option.name for option in _TABLE if not option.group or option.top_level)


def default(name: str) -> Any:
    """The default of OPTIONS[name] (a dataclass field's default, a keyword's)."""
    return OPTIONS[name].default


def group_options(group: str) -> dict[str, Option]:
    """field -> Option of one config record."""
    return {option.field: option for option in _TABLE if option.group == group}


def check_record(record: Any, group: str) -> None:
    """Every field of a config record that the table lists, checked and stored normalised (frozen records too):
    scikit-learn's parameter validation, at construction."""
    for field, option in group_options(group).items():
        object.__setattr__(record, field, option.check(getattr(record, field)))

"""The settings of a training run as `transferlab.train` takes them: a dozen keywords of its own, the rest in small
config records, one per group (the progressive disclosure of Keras' compile/fit and fastai's learner; the
parameter validation of scikit-learn, at construction).

    transferlab.train("data/", epochs=20, fit={"batch_size": 64}, split={"exclude": ["blurry"]})

A group keyword takes its record, a dict of the record's fields, or, for split, head and engine, a plain value
for the main field: split=(0.8, 0.1, 0.1), head="linear", engine="ray". `train_settings` turns the keywords into
one `TrainSettings`; `compare` and `auto` take the same keywords and pass them on. The keywords from before the
groups (batch_size=64, views=2, ...) still work for one release: each is mapped into its group with a
DeprecationWarning that names the new spelling. Every default and check is the table's (core.options).
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from transferlab.core.config import FitConfig, check_layer, check_split_csv_alone
from transferlab.core.errors import TransferlabError
from transferlab.core.options import BY_KEYWORD, GROUPS, OPTIONS, TOP_LEVEL, check_record, default, group_options


@dataclass(frozen=True)
class SplitConfig:
    """Which files, and how they are divided: the (train, validation, test) `fractions` of a folder of classes, the
    classes to `include` or `exclude`, at most `max_per_class` images per class; or `split_csv`, the split.csv of
    an earlier run, which fixes the files (and so takes none of the others); `skip`, doctor's findings.csv (or its
folder), whose files leave training and validation."""

    fractions: tuple[float, float, float] = default("split.fractions")
    include: tuple[str, ...] | None = default("split.include")
    exclude: tuple[str, ...] | None = default("split.exclude")
    max_per_class: int | None = default("split.max_per_class")
    split_csv: str | Path | None = default("split.split_csv")
    skip: str | Path | None = default("split.skip")

    def __post_init__(self):
        check_record(self, "split")
        check_split_csv_alone(self.split_csv, include=self.include, exclude=self.exclude,
                              max_per_class=self.max_per_class)

    def dataset_keywords(self) -> dict:
        """The keywords of `data.load_dataset` that choose and divide the files."""
        return {"split": self.fractions, "include": self.include, "exclude": self.exclude,
                "max_per_class": self.max_per_class, "split_csv": self.split_csv, "skip": self.skip}


@dataclass(frozen=True)
class HeadConfig:
    """The classifier on the features: `mlp` is the notebooks' head, Dense(hidden, relu) -> Dropout(dropout) ->
    Dense(n_classes); `linear` is Dropout -> one Dense layer. `in_features` and `n_classes` come from the data
    when the head is built (model.json records them); a user leaves them out."""

    kind: str = default("head.kind")
    in_features: int | None = None
    n_classes: int | None = None
    hidden: int = default("head.hidden")
    dropout: float = default("head.dropout")

    def __post_init__(self):
        check_record(self, "head")
        if self.n_classes is not None and self.n_classes < 2:
            raise TransferlabError(f"a classifier needs at least two classes, got {self.n_classes}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrunkConfig:
    """The frozen backbone that computes the features: the stage to read (`layer`, extract and augment), its
    `weights` file, the `runtime` and `precision` it runs in, images per batch, the input `image_size`, and where
    features and weights are cached (`cache_dir`)."""

    layer: int | None = default("trunk.layer")
    weights: str | Path | None = default("trunk.weights")
    runtime: str = default("trunk.runtime")
    precision: str = default("trunk.precision")
    extract_batch_size: int = default("trunk.extract_batch_size")
    image_size: int | None = default("trunk.image_size")
    cache_dir: str | Path | None = default("trunk.cache_dir")

    def __post_init__(self):
        check_record(self, "trunk")


@dataclass(frozen=True)
class FinetuneConfig:
    """Augmented views and fine-tuning: `views` per training image (augment, finetune), trained `end_to_end` or
    from cached views (augment, finetune), and the fine-tuning phase: blocks to `unfreeze` (a number, or "all" for
    the whole network), its own `lr`, `epochs` and `batch_size`, and BatchNorm statistics kept or re-estimated
    (`batchnorm`)."""

    views: int = default("finetune.views")
    unfreeze: int | str = default("finetune.unfreeze")
    lr: float | None = default("finetune.lr")
    epochs: int = default("finetune.epochs")
    batch_size: int | None = default("finetune.batch_size")
    end_to_end: bool | None = default("finetune.end_to_end")
    batchnorm: str = default("finetune.batchnorm")

    def __post_init__(self):
        check_record(self, "finetune")


@dataclass(frozen=True)
class EngineConfig:
    """Where the work runs: `name` "local", or "ray" on the cluster at `ray_address` (None: a local Ray instance)
    with `workers` Ray Train workers for data-parallel training."""

    name: str = default("engine.name")
    ray_address: str | None = default("engine.ray_address")
    workers: int | None = default("engine.workers")

    def __post_init__(self):
        check_record(self, "engine")


RECORDS = {"split": SplitConfig, "fit": FitConfig, "head": HeadConfig, "trunk": TrunkConfig,
           "finetune": FinetuneConfig, "engine": EngineConfig}  # in the order of GROUPS


@dataclass(frozen=True)
class TrainSettings:
    """Every setting of one training run, as given (None: the strategy's default, resolved by `runs.pipeline`)."""

    backbone: str | None = default("backbone")
    strategy: str = default("strategy")
    recipe: str | None = default("recipe")
    augment: Any = default("augment")
    budget: float | None = default("budget")
    out: str | Path | None = default("out")
    overwrite: bool = default("overwrite")
    device: str = default("device")
    tta: int = default("tta")
    explain: int = default("explain")
    verbose: int = default("verbose")
    quiet: bool = default("quiet")
    split: SplitConfig = field(default_factory=SplitConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    trunk: TrunkConfig = field(default_factory=TrunkConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self):
        check_record(self, "")
        if self.budget is not None and self.strategy != "auto":
            raise TransferlabError("budget applies to --strategy auto only", hint="add --strategy auto, or drop --budget")
        if self.strategy == "auto" and self.engine.name != "local":
            raise TransferlabError("--engine ray takes a strategy whose features it computes, not auto",
                                   hint="use --strategy extract or augment with --engine ray")
        check_layer(self.strategy, self.trunk.layer)

    @property
    def silent(self) -> bool:
        return self.quiet or self.verbose == 0

    def updated(self, **changes: Any) -> TrainSettings:
        """A copy with keywords of train replaced; for a group, a dict changes the fields it names and a record
        replaces the whole group."""
        for group in GROUPS:
            if isinstance(changes.get(group), dict):
                changes[group] = replace(getattr(self, group), **changes[group])
        return replace(self, **changes)

    def keywords(self) -> dict:
        """The keywords of `transferlab.train` (and compare, auto) that give these settings again."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict:
        """For config.json: every option of the table under its name, grouped (a deadline is a moment, not a
        setting, and is left out)."""
        values = {name: _plain(getattr(self, name)) for name in group_options("")}
        for group in GROUPS:
            record = getattr(self, group)
            values[group] = {name: _plain(getattr(record, name)) for name in group_options(group) if name != "deadline"}
        return values


def _plain(value: Any) -> Any:
    """JSON-ready: tuples as lists, paths as text, an AugmentConfig as its fields."""
    if is_dataclass(value):
        return asdict(value)
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def train_settings(keywords: dict, *, stacklevel: int = 3) -> TrainSettings:
    """The settings the keywords of `transferlab.train` ask for; a keyword from before the groups is mapped into
    its group with a DeprecationWarning (`stacklevel` points it at the caller's line)."""
    keywords = dict(keywords)
    check_known(keywords)
    groups = {group: _changes(group, keywords.pop(group, None)) for group in GROUPS}
    for name in [name for name in keywords if name not in TOP_LEVEL]:
        option, value = BY_KEYWORD[name], keywords.pop(name)
        warnings.warn(f"transferlab.train({name}=...) is deprecated and goes in the next release: write "
                      f"{option.group}={{{option.field!r}: {value!r}}}", DeprecationWarning, stacklevel=stacklevel)
        _put(groups[option.group], option.field, value, name)
    for name in [name for name in keywords if OPTIONS[name].group]:  # epochs, lr, seed: keywords kept in fit
        value = keywords.pop(name)
        if value != OPTIONS[name].default:
            _put(groups["fit"], name, value, name)
    return TrainSettings(**keywords, **{group: RECORDS[group](**changes) for group, changes in groups.items()})


def grouped(flat: dict) -> dict:
    """Flat keywords (the command line's flags, by their flat names) as the keywords of train: those of a group
    gathered in a dict under the group's name."""
    keywords: dict = {}
    for name, value in flat.items():
        option = BY_KEYWORD[name]
        if option.group and not option.top_level:
            keywords.setdefault(option.group, {})[option.field] = value
        else:
            keywords[name] = value
    return keywords


def check_known(keywords: dict) -> None:
    known = {*TOP_LEVEL, *GROUPS, *BY_KEYWORD}
    for name in keywords:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            raise TransferlabError(f"transferlab.train got an unknown keyword {name!r}",
                                   hint=f"did you mean {close[0]}?" if close else "see help(transferlab.train)")


def _changes(group: str, value: Any) -> dict:
    """The fields a group keyword sets: a record's (those off their default), a dict's, or the main field's for a
    plain value (split=(0.8, 0.1, 0.1), head="linear", engine="ray")."""
    record, main = RECORDS[group], BY_KEYWORD.get(group)
    if value is None:
        return {}
    if isinstance(value, record):
        defaults = record()
        return {f.name: getattr(value, f.name) for f in fields(value) if getattr(value, f.name) != getattr(defaults, f.name)}
    if isinstance(value, dict):
        allowed = [f.name for f in fields(record)]
        for name in value:
            if name not in allowed:
                raise TransferlabError(f"{group}= has no setting {name!r}", hint=f"{group} takes: {', '.join(allowed)}")
        return dict(value)
    if main is not None and main.group == group:
        return {main.field: value}
    raise TransferlabError(f"{group}= takes a {record.__name__} or a dict, got {value!r}",
                           hint=f"e.g. {group}={{{next(iter(group_options(group)))!r}: ...}}")


def _put(changes: dict, name: str, value: Any, keyword: str) -> None:
    if name in changes and changes[name] != value:
        raise TransferlabError(f"{keyword} is given twice, differently: {changes[name]!r} and {value!r}",
                               hint=f"give {keyword} once")
    changes[name] = value

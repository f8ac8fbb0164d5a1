"""The Python API: `transferlab.train("data/")` works; the common knobs are keywords, the rest a config record away.

A thin front: training lives in `transferlab.runs.pipeline`, comparisons in `transferlab.runs.compare`, evaluations on new
labelled folders in `transferlab.runs.evaluation`; the settings, their defaults and checks in `transferlab.core.settings`
and `transferlab.core.options`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferlab.core.config import FitConfig
from transferlab.core.options import default
from transferlab.core.settings import (
    EngineConfig,
    FinetuneConfig,
    HeadConfig,
    SplitConfig,
    TrunkConfig,
    train_settings,
)
from transferlab.data.dataset import DatasetSplit, load_dataset
from transferlab.model.classifier import Classifier
from transferlab.runs import pipeline
from transferlab.runs.auto import train_auto
from transferlab.runs.compare import Comparison, compare
from transferlab.runs.evaluation import Evaluation, evaluate

if TYPE_CHECKING:
    from rich.console import Console

    from transferlab.data.augment import AugmentConfig


def train(
    data: str | Path,
    *,
    backbone: str | None = default("backbone"),
    strategy: str = default("strategy"),
    recipe: str | None = default("recipe"),
    epochs: int | None = default("epochs"),
    lr: float | None = default("lr"),
    augment: AugmentConfig | str | dict | None = default("augment"),
    budget: float | str | None = default("budget"),
    out: str | Path | None = default("out"),
    overwrite: bool = default("overwrite"),
    device: str = default("device"),
    seed: int = default("seed"),
    tta: int = default("tta"),
    explain: int = default("explain"),
    verbose: int = default("verbose"),
    quiet: bool = default("quiet"),
    split: SplitConfig | dict | Sequence[float] | str | None = None,
    fit: FitConfig | dict | None = None,
    head: HeadConfig | dict | str | None = None,
    trunk: TrunkConfig | dict | None = None,
    finetune: FinetuneConfig | dict | None = None,
    engine: EngineConfig | dict | str | None = None,
    console: Console | None = None,
    **deprecated: Any,
) -> Classifier:
    """Train a classifier on a folder of images, evaluate it on the test split, write a run folder.

    Returns the trained `Classifier`, with `.metrics`, `.history` and `.run_dir` filled in.

    The common settings are keywords:
      backbone: a name from `transferlab backbones`, or several joined by "+" (extract, augment with cached
          views); None: efficientnet_lite0, or the recipe's small convnet for strategy "scratch".
      strategy: "extract" (a head on frozen features), "augment" (on augmented views), "finetune" (then the top
          blocks), "scratch" (a small convnet from random weights), or "auto": backbones and strategies tried
          within `budget` (seconds or "10m"; None: 6 minutes), chosen by cross-validation and validation.
      recipe: scratch only, "default" or "lesson" (the transfer-learning lesson's baseline,
          `transferlab.core.config.SCRATCH_RECIPES`); it fills the backbone, batch size, lr, epochs and
          augmentation that are not given.
      epochs, lr: of the head (of the network, for scratch); None: 50 epochs at 1e-3, or the recipe's.
      augment: a preset name ("notebook", "light", "light-noflip", "none"), an AugmentConfig or a dict of its
          fields; None: light views for augment and finetune, the recipe's for scratch.
      out: the run folder (default runs/<data>-<strategy>); it must be new unless `overwrite=True`, which
          replaces it as a whole, and it appears only when complete.
      device: "auto", "cpu" or "cuda"; seed: of the split, the head and the shuffling; tta: test-time
          augmentation views of the evaluation (1: off); verbose as in Keras: 0 silent (as quiet=True),
          1 progress bars, 2 one line per epoch (logs, CI).

    The rest come in groups, each a config record or a dict of its fields (`fit={"batch_size": 64}`):
      split=SplitConfig(fractions=(0.7, 0.15, 0.15), include=None, exclude=None, max_per_class=None,
          split_csv=None, skip=None): which files and how they are divided; split_csv (an earlier run's split.csv)
          takes none of the others; skip (doctor's findings.csv) leaves its files out of training and validation.
          A plain split=(0.8, 0.1, 0.1) gives the fractions.
      fit=FitConfig(batch_size=None, optimizer="adam", weight_decay=0.0, class_weight=None, patience=8, ...):
          how the head is trained; batch_size None: 256 on cached features, the recipe's for scratch;
          class_weight "balanced" weights classes by inverse frequency; patience None never stops early;
          deadline (a time.time(), set by auto) starts no epoch that would end after it.
      head=HeadConfig(kind="mlp", hidden=256, dropout=0.5): "mlp" is Dense(hidden) + dropout, "linear" one
          layer; head="linear" gives the kind.
      trunk=TrunkConfig(layer=None, weights=None, runtime="auto", precision="auto", extract_batch_size=32,
          image_size=None, cache_dir=None): the frozen backbone. layer: a stage index (extract, augment);
          runtime "auto" is ONNX Runtime on a CPU and PyTorch on CUDA (or "onnx", "torch", a name registered
          with `transferlab.features.runtimes.register_runtime`); precision "int8" quantises the trunk of
          extract and augment with ONNX Runtime (calibrated on up to 300 training images, cached), "auto" does
          for the backbones measured to lose at most 0.3 points with it; image_size replaces the backbone's
          input size everywhere (training, prediction, export).
      finetune=FinetuneConfig(views=3, unfreeze=1, lr=None, epochs=10, batch_size=None, end_to_end=None,
          batchnorm="frozen"):
          augmented `views` per training image (augment, finetune); end_to_end True augments every batch
          afresh through the frozen base, False trains from cached views, None picks end to end on a GPU;
          unfreeze: top blocks to fine-tune, or "all" for the whole network end to end (AdamW, one-cycle,
          label smoothing, discriminative learning rates); lr None: 1e-3 there, RMSprop 1e-5 for the cached
          top block, times sqrt(batch_size / 32); batch_size None: 32, or end to end on a GPU up to 256 while
          the phase still makes 200 optimizer steps; batchnorm: ImageNet's statistics "frozen" or re-estimated
          ("train").
      engine=EngineConfig(name="local", ray_address=None, workers=None): "ray" computes the frozen features
          on a Ray cluster (ray_address "auto", "HOST:PORT", or None for a local instance) into the same
          cache; finetune end to end and scratch train data-parallel on `workers` Ray Train workers
          (default: one per CPU, or GPU, of the cluster), checkpointing every epoch. engine="ray" gives the name.

    Every default, range and help text is in one table, `transferlab.core.options.OPTIONS`. The keywords from
    before the groups (batch_size=64, views=2, runtime="onnx", include=[...]) still work for one release, with a
    DeprecationWarning naming the new spelling.
    """
    keywords = {name: value for name, value in locals().items() if name not in ("data", "console", "deprecated")}
    settings = train_settings({**keywords, **deprecated})
    if settings.strategy == "auto":
        return train_auto(data, console=console, **settings.keywords())
    return pipeline.train(data, settings, console)


def load(run: str | Path, cache_dir: str | Path | None = None, device: str = "auto") -> Classifier:
    """Load a trained classifier from its run folder; its trunk runs on `device` (auto | cpu | cuda)."""
    return Classifier.load(run, cache_dir=Path(cache_dir) if cache_dir else None, device=device)


def dataset(data: str | Path, **kwargs) -> DatasetSplit:
    """The split `train` would use, without training (same keywords as `load_dataset`)."""
    return load_dataset(data, **kwargs)


__all__ = ["Classifier", "Comparison", "DatasetSplit", "EngineConfig", "Evaluation", "FinetuneConfig", "FitConfig",
           "HeadConfig", "SplitConfig", "TrunkConfig", "compare", "dataset", "evaluate", "load", "train"]

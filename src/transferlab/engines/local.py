"""Engines: where the work runs. "local" (the default) runs everything in this process. "ray" computes frozen
features on a Ray cluster into the same feature cache first (`transferlab.engines.ray_extraction`), after which the local
code reads them as cache hits, so training, evaluation, skipped.csv and the run folder are the local engine's
own; it trains fine-tuning (end to end) and scratch data-parallel on Ray Train (`transferlab.engines.ray_training`).
Ray is imported only here, and only when it is chosen.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from transferlab.core.config import TrainOptions
from transferlab.core.errors import TransferlabError
from transferlab.data.augment import AugmentConfig
from transferlab.data.dataset import DatasetSplit
from transferlab.features.combined import CombinedExtractor
from transferlab.features.extractor import FeatureExtractor
from transferlab.strategies import StrategyResult, run_strategy
from transferlab.strategies.augment import augment_config
from transferlab.strategies.base import build_result, make_extractor, runs_end_to_end

ENGINES = ("local", "ray")
RAY_STRATEGIES = ("extract", "augment")  # those whose frozen features the cluster computes
RAY_TRAINED = ("finetune", "scratch")  # trained data-parallel on Ray Train (finetune end to end)


def require_ray() -> None:
    """Ray is the optional [ray] extra: name it before anything imports Ray (find_spec imports nothing)."""
    if importlib.util.find_spec("ray") is None:
        raise TransferlabError("--engine ray needs Ray, which is not installed", hint="pip install 'transferlab[ray]'")


def check_engine(engine: str, strategy: str | None = None, end_to_end: bool = False, workers: int | None = None) -> str:
    if engine not in ENGINES:
        raise TransferlabError(f"unknown engine {engine!r}", hint="use --engine local or --engine ray")
    if workers is not None and (engine != "ray" or strategy not in RAY_TRAINED or workers < 1):
        raise TransferlabError("--workers (at least 1) is for data-parallel training: --engine ray with "
                               "--strategy finetune --end-to-end or scratch", hint="drop --workers")
    if engine == "ray" and strategy == "finetune" and not end_to_end:
        raise TransferlabError("--engine ray fine-tunes end to end (on Ray Train workers)", hint="add --end-to-end")
    if engine == "ray" and strategy is not None and strategy not in RAY_TRAINED and (strategy not in RAY_STRATEGIES or end_to_end):
        raise TransferlabError(
            f"--engine ray computes frozen features: strategy {strategy!r}{' end to end' if end_to_end else ''} "
            "does not use them",
            hint="use --strategy extract or augment (with --cached), finetune --end-to-end or scratch, or --engine local",
        )
    if engine == "ray":  # after the argument checks, which hold whether Ray is installed or not
        require_ray()
    return engine


def checkpoint_folder(run_dir: Path) -> Path:
    """Where data-parallel training checkpoints a run (beside its folder): a rerun resumes from there."""
    return run_dir.parent / f".{run_dir.name}.ray-train"


def train_strategy(engine: str, strategy: str, split: DatasetSplit, options: TrainOptions, *, run_dir: Path,
                   address: str | None = None, workers: int | None = None) -> StrategyResult:
    """The strategy's result: trained here (after the Ray engine has put its frozen features in the cache), or
    data-parallel on Ray Train."""
    if engine == "ray" and strategy in RAY_TRAINED:
        from transferlab.engines import ray_extraction as ray_engine
        from transferlab.engines import ray_training as ray_train

        ray_engine.connect(address, options.quiet)
        trained = ray_train.train_on_ray(strategy, split, options, workers=workers, checkpoints=checkpoint_folder(run_dir))
        return build_result(strategy, trained)
    precompute_split(engine, strategy, split, options, address=address)
    return run_strategy(strategy, split, options)


def precompute(engine: str, extractor: FeatureExtractor | CombinedExtractor, paths: Sequence[Path], *,
               address: str | None = None, quiet: bool = False, augment: AugmentConfig | None = None,
               view: int = 0) -> None:
    """With the Ray engine, compute the features of `paths` not yet cached on the cluster (each backbone of a
    combination on its own, as locally); with the local engine, nothing (extraction computes them itself)."""
    if check_engine(engine) == "local" or not paths:
        return
    from transferlab.engines import ray_extraction as ray_engine

    ray_engine.connect(address, quiet)
    for part in getattr(extractor, "parts", [extractor]):
        ray_engine.extract_to_cache(part, paths, augment=augment, view=view)


def precompute_split(engine: str, strategy: str, split: DatasetSplit, options: TrainOptions, *,
                     address: str | None = None) -> None:
    """The features `strategy` will read from the cache: every split unaugmented, plus the augment strategy's
    views of the training images."""
    if check_engine(engine, strategy, runs_end_to_end(options)) == "local":
        return
    extractor = make_extractor(options)
    if any(part.precision == "int8" for part in getattr(extractor, "parts", [extractor])):
        # the actors run the exported float trunk; int8 features would need the calibrated trunk shipped to them
        raise TransferlabError("--engine ray computes float32 features only", hint="add --precision float32")
    paths = list(dict.fromkeys(path for subset in split.subsets().values() for path in subset.paths))
    precompute(engine, extractor, paths, address=address, quiet=options.quiet)
    if strategy == "augment":
        for view in range(1, options.views + 1):
            precompute(engine, extractor, split.train.paths, address=address, quiet=options.quiet,
                       augment=augment_config(options), view=view)


def bulk_predict(engine: str, run: Path, images: Sequence[Path], out: Path | None, *, top_k: int, tta: int = 1,
                 address: str | None = None, quiet: bool = False) -> Path:
    """`predict --engine ray --out FILE` (`transferlab.engines.bulk_predict`); the local engine prints predictions."""
    if check_engine(engine) != "ray" or out is None:
        raise TransferlabError("--out and --engine ray go together: bulk prediction runs on a Ray cluster",
                               hint="add --engine ray --out predictions.parquet, or drop --out")
    if tta != 1:
        raise TransferlabError("--tta is not available with --engine ray", hint="use --engine local for TTA")
    from transferlab.engines.bulk_predict import check_out, predict_folder

    check_out(out)
    return predict_folder(run, images, out, top_k=top_k, address=address, quiet=quiet)

"""`transferlab embed`: a data set's frozen features as one parquet file (path, label, split, feature), for
training elsewhere, search or clustering. The split is train's (same layout detection, same seed); files that
do not decode are left out and listed in <out>.skipped.csv, as a run's skipped.csv lists them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transferlab.core.config import DEFAULT_BACKBONE, DEFAULT_SPLIT
from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_path
from transferlab.data.dataset import load_dataset
from transferlab.data.layouts import relative
from transferlab.engines.local import check_engine, precompute
from transferlab.features.combined import build_extractor

ROWS_PER_GROUP = 4096  # rows written at a time: the file grows by row groups, never held whole as a table


@dataclass
class Embedding:
    out: Path
    skipped_csv: Path
    rows: int
    dim: int
    skipped: int


def embed(
    data: str | Path,
    out: str | Path,
    *,
    backbone: str = DEFAULT_BACKBONE,
    engine: str = "local",
    ray_address: str | None = None,
    split: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    max_per_class: int | None = None,
    split_csv: str | Path | None = None,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    quiet: bool = False,
) -> Embedding:
    """Write the features of every image under `data` to the parquet file `out` (see the module docstring);
    `engine="ray"` computes them on a Ray cluster first (`ray_address` as for `train`)."""
    out = Path(out)
    if out.suffix != ".parquet":
        raise TransferlabError(f"--out must end in .parquet, got {out.name}", hint="e.g. --out features.parquet")
    check_engine(engine)
    dataset = load_dataset(data, split=split, seed=seed, include=include, exclude=exclude,
                           max_per_class=max_per_class, split_csv=split_csv)
    extractor = build_extractor(backbone, batch_size=batch_size, cache_dir=cache_dir, quiet=quiet)
    every_path = [path for subset in dataset.subsets().values() for path in subset.paths]
    precompute(engine, extractor, list(dict.fromkeys(every_path)), address=ray_address, quiet=quiet)
    rows, dim, failed = write_features(dataset, extractor, out)
    skipped_csv = out.with_name(f"{out.stem}.skipped.csv")
    dataset.without(failed).write_skipped_csv(skipped_csv)
    return Embedding(out, skipped_csv, rows, dim, len(dataset.skipped) + len(failed))


def write_features(dataset, extractor, out: Path) -> tuple[int, int, dict[Path, str]]:
    """Stream each split's features into `out` group by group; (rows, feature width, files that failed)."""
    import pyarrow.parquet as pq

    rows, dim, failed, writer = 0, 0, {}, None
    subsets = dataset.subsets()
    if dataset.test_is_validation:
        subsets.pop("test")  # the same images: written once, as validation
    with atomic_path(out) as tmp:
        try:
            for name, subset in subsets.items():
                for start in range(0, len(subset), ROWS_PER_GROUP):
                    paths = subset.paths[start : start + ROWS_PER_GROUP]
                    result = extractor.extract(paths, description=f"features: {name}")
                    failed.update(result.failed)
                    if not result.kept.any():
                        continue
                    dim = result.features.shape[1]
                    table = features_table(dataset, name, paths, subset.labels[start : start + ROWS_PER_GROUP], result)
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                    rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise TransferlabError(f"no image under {dataset.root} could be decoded; nothing to write")
    return rows, dim, failed


def features_table(dataset, split_name: str, paths, labels: np.ndarray, result):
    """One row per image that decoded (at least one): path (relative to the data folder), label, split and the
    vector."""
    import pyarrow as pa

    kept = result.kept
    features = np.ascontiguousarray(result.features, dtype=np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), features.shape[1])
    return pa.table({
        "path": [relative(path, dataset.root) for path, ok in zip(paths, kept) if ok],
        "label": [dataset.classes[label] for label, ok in zip(labels, kept) if ok],
        "split": [split_name] * int(kept.sum()),
        "feature": vectors,
    })

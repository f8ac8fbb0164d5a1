"""Bulk prediction on a Ray cluster: `transferlab predict RUN FOLDER --engine ray --out predictions.parquet`.

One row per image: path, label_1, probability_1, ..., label_k, probability_k, error (the reason an image was
skipped, else empty). Rows reach the driver in batches and each batch is written at once as a part file in
<out>.parts/ (atomically); a rerun after a crash reads the paths already written there and predicts only the
others. When every image is done the parts become <out> (.parquet or .csv, sorted by path) and are removed.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferlab.core.errors import TransferlabError
from transferlab.core.files import atomic_path
from transferlab.features.extractor import FeatureExtractor
from transferlab.model.classifier import Classifier

FORMATS = (".parquet", ".csv")


def check_out(out: Path) -> None:
    if out.suffix not in FORMATS:
        raise TransferlabError(f"--out must end in .parquet or .csv, got {out.name}", hint="e.g. --out predictions.parquet")


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def written_paths(parts: Path) -> set[str]:
    """Paths already predicted by an earlier, interrupted run (the parts it finished writing)."""
    import pyarrow.parquet as pq

    if not parts.is_dir():
        return set()
    return {path for part in sorted(parts.glob("part-*.parquet"))
            for path in pq.read_table(part, columns=["path"]).column("path").to_pylist()}


class PredictActor:
    """The trunk actor plus the run's head: features -> top-k labels and probabilities."""

    def __init__(self, extractor: FeatureExtractor, trunk_ref: list, classifier: Classifier, top_k: int,
                 decode: dict | None = None):
        from transferlab.engines.ray_extraction import TrunkActor

        self.trunk = TrunkActor(extractor, trunk_ref, decode=decode)
        self.classifier, self.top_k = classifier, top_k

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = self.trunk.prepared(batch)
        ok = batch["error"] == ""
        features = self.trunk.features(batch)
        k = max(1, min(self.top_k, len(self.classifier.classes)))
        labels = np.full((len(ok), k), "", dtype=object)
        probabilities = np.full((len(ok), k), np.nan, dtype=np.float64)
        if ok.any():
            for row, probs in zip(np.flatnonzero(ok), self.classifier.probabilities_from_features(features[ok])):
                top = self.classifier.top_k(probs, k)
                labels[row] = [label for label, _ in top]
                probabilities[row] = [p for _, p in top]
        columns = {"path": batch["path"]}
        for rank in range(k):
            columns[f"label_{rank + 1}"] = labels[:, rank]
            columns[f"probability_{rank + 1}"] = probabilities[:, rank]
        columns["error"] = batch["error"]
        return columns


def predict_folder(run: str | Path, images: Sequence[Path], out: str | Path, *, top_k: int = 3,
                   address: str | None = None, quiet: bool = False) -> Path:
    """Predict every image on the cluster into `out` (see the module docstring); returns `out`."""
    from transferlab.engines import ray_extraction as ray_engine

    out = Path(out)
    check_out(out)
    classifier = Classifier.load(run)
    if not isinstance(classifier.extractor, FeatureExtractor):
        raise TransferlabError("predict --engine ray takes a run with one backbone", hint="use --engine local")
    parts = parts_dir(out)
    done = written_paths(parts)
    todo = [str(p) for p in images if str(p) not in done]
    if todo:
        ray_engine.connect(address, quiet)
        shipped = copy.copy(classifier)
        shipped.extractor = ray_engine.portable(classifier.extractor)
        parts.mkdir(parents=True, exist_ok=True)
        start = 1 + max((int(part.stem.split("-")[1]) for part in parts.glob("part-*.parquet")), default=-1)
        batches = ray_engine.stream(todo, classifier.extractor, PredictActor,
                                    actor_args={"classifier": shipped, "top_k": top_k})
        for n, batch in enumerate(batches, start):
            write_part(parts / f"part-{n:06d}.parquet", batch)
    combine(parts, out)
    return out


def write_part(path: Path, batch: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({name: list(values) if values.dtype == object else values for name, values in batch.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def combine(parts: Path, out: Path) -> None:
    """The parts, sorted by path, as `out`; the parts folder goes once `out` is complete."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    tables = [pq.read_table(part) for part in sorted(parts.glob("part-*.parquet"))]
    if not tables:
        raise TransferlabError("no images to predict")
    table = pa.concat_tables(tables).sort_by("path")
    with atomic_path(out) as tmp:
        if out.suffix == ".csv":
            pacsv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
    shutil.rmtree(parts)

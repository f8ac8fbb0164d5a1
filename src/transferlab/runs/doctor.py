"""`transferlab doctor`: near-duplicates (and the leaks and label conflicts among them), likely label errors,
outliers and set-level problems of a folder of images, found on the features `train` caches, before they cost
accuracy or fake it. Nothing in the user's folder is moved or deleted: doctor writes findings.csv (which
`train --skip` reads), doctor.html and findings.json to its own folder.
"""

from __future__ import annotations

import csv
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from transferlab.backbones.registry import default_cache_dir
from transferlab.core.files import atomic_path, atomic_write_bytes, memoized_file_digest
from transferlab.core.options import DEFAULT_BACKBONE
from transferlab.core.run_folder import check_destination
from transferlab.core.settings import SplitConfig
from transferlab.data.dataset import DatasetSplit, load_dataset
from transferlab.data.image_checks import FINDINGS, ImageFacts, facts_of, set_checks
from transferlab.data.layouts import relative
from transferlab.data.same_picture import same_picture_scores
from transferlab.features.cache import FeatureCache
from transferlab.features.combined import build_extractor
from transferlab.model.data_issues import (
    Neighbours,
    candidate_pairs,
    label_issues,
    neighbours,
    out_of_fold_probabilities,
    outliers,
)
from transferlab.reports.doctor import render_findings_card, write_doctor_html
from transferlab.runs.writer import unique_run_dir

# Measured on 100 planted copies in Caltech-101 (bench/doctor.py duplicates, docs/benchmarks.md): every copy is
# among its original's 10 nearest neighbours at a feature cosine of CANDIDATE_FEATURES or more (the lowest seen:
# 0.73), so only such pairs are compared pixel by pixel (data.same_picture). A pair is the same picture when a
# window of one aligns with the other at a grey correlation of ALIGNED or more and their colours there differ by
# at most SAME_COLOURS (mean absolute, 0-1): 96 of the 100 copies; distinct pictures of one plain subject
# (yin-yang symbols, stop signs, wrenches) align as well, and by eye most differ by 0.035-0.06.
CANDIDATE_FEATURES = 0.65
ALIGNED = 0.90
SAME_COLOURS = 0.035
KINDS = ("leak", "conflict", "duplicate", "label", "outlier")  # console and page order
FINDINGS_JSON = "findings.json"
PAGE = "doctor.html"


@dataclass
class Finding:
    """One row of findings.csv. `path` is the file to leave out if the finding holds (for a pair: the copy in
    training, the other being `partner`); `suggested` the class a likely label error probably belongs to."""

    kind: str  # leak | conflict | duplicate | label | outlier
    path: str  # relative to the data folder
    score: float  # cosine similarity (pairs), margin (label), robust z (outlier)
    label: str
    split: str
    partner: str = ""
    suggested: str = ""
    detail: str = ""


@dataclass
class Findings:
    """What doctor found in `data`: one `Finding` per file (or pair), and `notes` about the set as a whole.
    Shows itself as an HTML card in a notebook; `out` is the folder written (None when nothing was)."""

    data: Path
    n_images: int
    classes: list[str]
    rows: list[Finding]
    notes: list[str]
    seconds: float = 0.0
    out: Path | None = None
    paths: dict[str, Path] = field(default_factory=dict, repr=False)  # relative -> absolute, for thumbnails

    def counts(self) -> dict[str, int]:
        return {kind: sum(row.kind == kind for row in self.rows) for kind in KINDS}

    def of_kind(self, kind: str) -> list[Finding]:
        return [row for row in self.rows if row.kind == kind]

    def table(self) -> Table:
        """The console summary: counts per kind, with what each means."""
        meaning = {"leak": "the same picture in two splits: the test estimate is inflated",
                   "conflict": "the same picture under two classes",
                   "duplicate": "the same picture twice in one class and split",
                   "label": "likely label errors (a suggested class in findings.csv)",
                   "outlier": "far from their class or from the whole set"}
        table = Table(title=f"doctor: {self.data.name}, {self.n_images} images, {len(self.classes)} classes",
                      caption=f"{self.seconds:.0f} s" + (f"; wrote {self.out}" if self.out else ""))
        table.add_column("finding")
        table.add_column("count", justify="right")
        table.add_column("meaning")
        for kind, n in self.counts().items():
            table.add_row(kind, str(n), meaning[kind], style="bold" if n and kind in ("leak", "conflict") else None)
        for note in self.notes:
            table.add_row("set", "", note)
        return table

    def records(self) -> list[dict]:
        return [asdict(row) for row in self.rows]

    def _repr_html_(self) -> str:
        return render_findings_card(self.summary(), self.records(), self.notes, self.paths)

    def summary(self) -> dict:
        return {"data": str(self.data), "n_images": self.n_images, "n_classes": len(self.classes),
                "counts": self.counts(), "seconds": round(self.seconds, 1)}

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / FINDINGS) as tmp, tmp.open("w", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, fieldnames=list(Finding.__dataclass_fields__))
            writer.writeheader()
            writer.writerows(self.records())
            writer.writerows({"kind": "set", "detail": note} for note in self.notes)
        atomic_write_bytes(folder / FINDINGS_JSON,
                           json.dumps({**self.summary(), "notes": self.notes}, indent=2).encode())
        write_doctor_html(folder / PAGE, self.summary(), self.records(), self.notes, self.paths)
        self.out = folder


def doctor(data: str | Path, *, backbone: str | None = None, split: SplitConfig | dict | None = None, seed: int = 0,
           out: str | Path | None = None, overwrite: bool = False, write: bool = True, device: str = "auto",
           runtime: str = "auto", cache_dir: str | Path | None = None, quiet: bool = False,
           console: Console | None = None) -> Findings:
    """Examine a folder of images as `train` would split it (same layouts, `split`, `seed`, feature cache) and
    return the `Findings`; unless `write=False`, also write findings.csv, findings.json and doctor.html to
    `out` (default runs/<data>-doctor)."""
    started = time.perf_counter()
    console = console or Console(quiet=quiet, stderr=True)
    split = split if isinstance(split, SplitConfig) else SplitConfig(**(split or {}))
    folder = unique_run_dir(out, data, "doctor") if write else None
    check_destination(folder, overwrite)
    dataset = load_dataset(data, seed=seed, **split.dataset_keywords())
    paths, labels, splits = _entries(dataset)
    extractor = build_extractor(backbone or DEFAULT_BACKBONE, device=device, runtime=runtime, precision="auto",
                                cache_dir=Path(cache_dir) if cache_dir else None, quiet=quiet)
    extractor.calibrate_on(dataset.train.paths)  # as train does, so both share the cached features
    extracted = extractor.extract(paths, description="features: doctor")
    kept = np.asarray(extracted.kept, dtype=bool)
    paths, labels, splits = [p for p, k in zip(paths, kept) if k], labels[kept], splits[kept]
    facts = remembered_facts(paths, Path(cache_dir) if cache_dir else default_cache_dir())
    usable = np.array([f is not None for f in facts])
    paths, labels, splits = [p for p, u in zip(paths, usable) if u], labels[usable], splits[usable]
    features, facts = extracted.features[usable], [f for f in facts if f is not None]
    names = [relative(p, dataset.root) for p in paths]
    # The label fits (one BLAS thread) run beside the neighbours and the pixel comparison, which use the other
    # core part of the time (about 1 s less of a 17-18 s warm run on Caltech-101, 2 cores).
    with ThreadPoolExecutor(1) as pool:
        labelled = pool.submit(label_findings, features, labels, splits, names, dataset.classes, seed)
        near = neighbours(features, labels)
        duplicates = duplicate_findings(near, labels, splits, facts, names, dataset.classes)
        rows = duplicates + labelled.result() + outlier_findings(near, labels, splits, names, dataset.classes)
    notes = set_checks(facts, labels, dataset.classes, names, split.fractions)
    findings = Findings(dataset.root, len(paths), dataset.classes, rows, notes, paths=dict(zip(names, paths)))
    findings.seconds = time.perf_counter() - started
    if folder is not None:
        findings.write(folder)
    console.print(findings.table())
    return findings


FACTS_CACHE = "image-facts-v2.sqlite"  # a new name when ImageFacts or its thumbnail change


def remembered_facts(paths: list[Path], cache_dir: Path) -> list[ImageFacts | None]:
    """`facts_of`, kept in a cache beside the features' and keyed like them by each file's content: a warm doctor
    decodes no image (on Caltech-101 decoding took 8-17 s of a warm run under load)."""
    cache = FeatureCache(cache_dir / "features" / FACTS_CACHE, dtype=np.uint8)
    try:
        keys = [memoized_file_digest(p) for p in paths]
        stored = cache.get_many(keys)
        missing = [i for i, key in enumerate(keys) if key not in stored]
        computed = dict(zip(missing, facts_of([paths[i] for i in missing])))
        cache.put_many({keys[i]: f.packed() for i, f in computed.items() if f is not None})
    finally:
        cache.close()
    return [computed[i] if i in computed else ImageFacts.unpacked(stored[key]) for i, key in enumerate(keys)]


def _entries(dataset: DatasetSplit) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """Every image once (test may be the validation set), its label and its split's name."""
    subsets = {name: s for name, s in dataset.subsets().items() if not (name == "test" and dataset.test_is_validation)}
    paths = [p for s in subsets.values() for p in s.paths]
    labels = np.concatenate([s.labels for s in subsets.values()])
    splits = np.array([name for name, s in subsets.items() for _ in s.paths])
    return paths, labels, splits


def duplicate_findings(near: Neighbours, labels: np.ndarray, splits: np.ndarray, facts, names: list[str],
                       classes: list[str]) -> list[Finding]:
    """Pairs that are the same picture (alike features, then aligned pixels and colours, see CANDIDATE_FEATURES):
    a conflict across classes, a leak across splits, a duplicate otherwise."""
    candidates = candidate_pairs(near, CANDIDATE_FEATURES)
    if not candidates:
        return []
    thumbnails = np.stack([f.thumbnail for f in facts])
    alignment, difference = same_picture_scores(thumbnails, np.array([(i, j) for i, j, _ in candidates]), ALIGNED)
    rows = []
    for (i, j, similarity), aligned, colours in zip(candidates, alignment, difference):
        if colours > SAME_COLOURS:  # inf where the alignment fell short
            continue
        kept, dropped = sorted((i, j), key=lambda k: (splits[k] != "test", names[k]))  # keep the test copy
        kind = "conflict" if labels[i] != labels[j] else "leak" if splits[i] != splits[j] else "duplicate"
        detail = f"pixels aligned at {aligned:.2f}, colours {colours:.3f} apart"
        if kind == "conflict":
            detail += f"; partner filed under {classes[labels[kept]]}"
        if splits[i] != splits[j]:
            detail += f"; {splits[dropped]} / {splits[kept]}"
        rows.append(Finding(kind, names[dropped], round(similarity, 4), classes[labels[dropped]], str(splits[dropped]),
                            partner=names[kept], detail=detail))
    return sorted(rows, key=lambda row: -row.score)


def label_findings(features: np.ndarray, labels: np.ndarray, splits: np.ndarray, names: list[str],
                   classes: list[str], seed: int) -> list[Finding]:
    probabilities = out_of_fold_probabilities(features, labels, len(classes), seed=seed)
    return [Finding("label", names[i], round(margin, 4), classes[labels[i]], str(splits[i]),
                    suggested=classes[suggested],
                    detail=f"p({classes[suggested]}) {probabilities[i, suggested]:.2f}, "
                           f"p({classes[labels[i]]}) {probabilities[i, labels[i]]:.2f}")
            for i, suggested, margin in label_issues(probabilities, labels)]


def outlier_findings(near: Neighbours, labels: np.ndarray, splits: np.ndarray, names: list[str],
                     classes: list[str]) -> list[Finding]:
    return [Finding("outlier", names[i], round(z, 2), classes[labels[i]], str(splits[i]), detail=why)
            for i, why, z in outliers(near)]

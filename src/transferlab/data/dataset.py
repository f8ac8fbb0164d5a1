"""Image datasets: layout detection, seeded stratified splits, cheap file checks, robust decoding.

`load_dataset` recognises these layouts (first match wins):

- ``csv``: ``split_csv=`` names the split.csv of a previous run (columns split,path,class); reproduced exactly.
- ``presplit``: ``data/{train,validation,test}/<class>/<image>`` (aliases such as training, val, testing).
- ``lists``: ``data/train.txt`` and ``data/test.txt`` (optional ``val.txt``): one relative path a line,
  the class is the parent folder's name.
- ``folders``: ``data/<class>/<image>``, split at random (seeded, stratified by class).

Files are checked cheaply while scanning (extension, size, image header); files that only fail when fully
decoded are dropped later with `DatasetSplit.without`.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.table import Table
from sklearn.model_selection import train_test_split

from transferlab.core.config import (
    check_data_folder,
    check_split_csv_alone,
    split_fractions,
)
from transferlab.core.errors import TransferlabError
from transferlab.data.image_checks import read_skip_file
from transferlab.data.layouts import (
    SPLITS,
    Entry,
    Skipped,
    check_disjoint,
    checked,
    discover,
    listing,
    read_split_csv,
    relative,
    without_duplicates,
)

AUTO_VALIDATION_FRACTION = 0.15  # share of train held out when a layout brings no validation set


@dataclass
class Subset:
    """Image paths of one split and their class indices (into `DatasetSplit.classes`)."""

    paths: list[Path]
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class DatasetSplit:
    """A dataset split into train / validation / test, with the files that were left out."""

    root: Path
    classes: list[str]
    train: Subset
    validation: Subset
    test: Subset
    skipped: list[Skipped]
    test_is_validation: bool
    layout: str  # "folders" | "presplit" | "lists" | "csv"

    def subsets(self) -> dict[str, Subset]:
        return {"train": self.train, "validation": self.validation, "test": self.test}

    def class_counts(self) -> dict[str, dict[str, int]]:
        per_split = {
            name: np.bincount(subset.labels, minlength=len(self.classes)) for name, subset in self.subsets().items()
        }
        return {cls: {name: int(counts[i]) for name, counts in per_split.items()} for i, cls in enumerate(self.classes)}

    def summary_table(self) -> Table:
        test_header = "test (= validation)" if self.test_is_validation else "test"
        table = Table(
            title=f"{self.root.name}: {len(self.classes)} classes ({self.layout} layout)",
            caption=f"{len(self.skipped)} file(s) skipped",
        )
        table.add_column("class")
        for header in ("train", "validation", test_header):
            table.add_column(header, justify="right")
        for cls, counts in self.class_counts().items():
            table.add_row(cls, *(str(counts[name]) for name in SPLITS))
        table.add_section()
        table.add_row("total", *(str(len(subset)) for subset in self.subsets().values()), style="bold")
        return table

    def write_split_csv(self, path: Path | str) -> None:
        """Write split,path,class rows (paths relative to root); `load_dataset(split_csv=...)` reads them back."""
        written = {name: subset for name, subset in self.subsets().items()
                   if not (name == "test" and self.test_is_validation)}  # read back as test_is_validation
        with Path(path).open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["split", "path", "class"])
            for name, subset in written.items():
                for image, label in zip(subset.paths, subset.labels):
                    writer.writerow([name, relative(image, self.root), self.classes[label]])

    def write_skipped_csv(self, path: Path | str) -> None:
        with Path(path).open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "reason"])
            writer.writerows([relative(Path(item.path), self.root), item.reason] for item in self.skipped)

    def without(self, failed: Mapping[Path, str]) -> DatasetSplit:
        """This split minus files that failed to decode later (path -> reason), which join `skipped`."""
        dropped = {Path(path): reason for path, reason in failed.items()}
        present = {path for subset in self.subsets().values() for path in subset.paths}
        val = _drop(self.validation, dropped)
        result = replace(
            self,
            train=_drop(self.train, dropped),
            validation=val,
            test=val if self.test_is_validation else _drop(self.test, dropped),
            skipped=self.skipped + [Skipped(str(path), reason) for path, reason in dropped.items() if path in present],
        )
        _check_usable(result)
        return result


def load_dataset(
    data: Path | str,
    *,
    split: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    max_per_class: int | None = None,
    split_csv: Path | str | None = None,
    skip: Path | str | None = None,
) -> DatasetSplit:
    """Find the images under `data`, check them cheaply and split them (see the module docstring for layouts).

    `split` (train, validation, test fractions) applies to the folders layout only; `max_per_class` caps each
    class within each split source (a seeded random subset); `include`/`exclude` select classes by name; `skip`
    (doctor's findings.csv or folder) names files that leave training and validation after the split is made.
    """
    root = check_data_folder(data)
    fractions = split_fractions(split)
    if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise TransferlabError(f"max_per_class must be a positive whole number, got {max_per_class!r}",
                               hint="e.g. max_per_class=50, or leave it out to use every image")
    check_split_csv_alone(split_csv, include=include, exclude=exclude, max_per_class=max_per_class)
    if split_csv is not None:
        layout, classes, groups = read_split_csv(Path(split_csv), root)
    else:
        layout, classes, groups = discover(root)
    classes = _select_classes(classes, _names(include), _names(exclude))
    chosen = set(classes)
    groups, skipped = checked({name: [e for e in entries if e[1] in chosen] for name, entries in groups.items()})
    check_disjoint(groups)  # one path listed in two splits: the lists contradict each other
    groups, duplicates = without_duplicates(groups, root)
    skipped += duplicates
    if max_per_class is not None:
        groups = {name: _capped(entries, max_per_class, seed) for name, entries in groups.items()}
    train, val, test = _assign(groups, fractions, seed)
    index = {cls: i for i, cls in enumerate(classes)}
    val_subset = _subset(val, index)
    dataset = DatasetSplit(
        root=root,
        classes=classes,
        train=_subset(train, index),
        validation=val_subset,
        test=val_subset if test is None else _subset(test, index),
        skipped=skipped,
        test_is_validation=test is None,
        layout=layout,
    )
    if skip is not None:
        dataset = _skipping(dataset, read_skip_file(skip))
    _check_usable(dataset)
    return dataset


def _skipping(dataset: DatasetSplit, flagged: Mapping[str, str]) -> DatasetSplit:
    """The split minus the files doctor flagged, which join `skipped` with doctor's reason. They leave training
    and validation only: the split is made first, so the test images stay the same, and taking the images a model
    finds hard out of the test set would flatter the estimate."""
    reasons = {dataset.root / path: reason for path, reason in flagged.items()}  # an absolute path stays absolute
    val_is_test = dataset.test_is_validation
    train = _drop(dataset.train, reasons)
    validation = dataset.validation if val_is_test else _drop(dataset.validation, reasons)
    left_out = set(dataset.train.paths) - set(train.paths) | set(dataset.validation.paths) - set(validation.paths)
    return replace(dataset, train=train, validation=validation, test=validation if val_is_test else dataset.test,
                   skipped=dataset.skipped + [Skipped(str(path), reasons[path]) for path in sorted(left_out)])


def _names(names: Iterable[str] | None) -> set[str] | None:
    if names is None:
        return None
    return {names} if isinstance(names, str) else set(names)


def _select_classes(available: list[str], include: set[str] | None, exclude: set[str] | None) -> list[str]:
    unknown = sorted(((include or set()) | (exclude or set())) - set(available))
    if unknown:
        raise TransferlabError(f"unknown class name(s): {listing(unknown)}",
                               hint=f"available classes: {listing(available, 200)}")
    chosen = [cls for cls in available if (include is None or cls in include) and cls not in (exclude or set())]
    if len(chosen) < 2:
        found = f"{len(chosen)}: {listing(chosen)}" if chosen else "none"
        raise TransferlabError(f"need at least two classes, found {found}",
                               hint="give each class its own subfolder (data/<class>/<image>); "
                                    "include/exclude must leave two or more")
    return chosen


def _capped(entries: list[Entry], max_per_class: int, seed: int) -> list[Entry]:
    """At most max_per_class entries of each class: a seeded random subset of the sorted entries."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[Entry]] = defaultdict(list)
    for entry in sorted(entries):
        by_class[entry[1]].append(entry)
    kept = []
    for cls in sorted(by_class):
        items = by_class[cls]
        if len(items) > max_per_class:
            items = [items[i] for i in sorted(rng.choice(len(items), max_per_class, replace=False))]
        kept += items
    return kept


def _assign(groups: dict[str, list[Entry]], fractions: tuple[float, float, float], seed: int
            ) -> tuple[list[Entry], list[Entry], list[Entry] | None]:
    """(train, validation, test) entries; test is None when the validation set doubles as the test set."""
    if "all" in groups:
        train, val, test = _split_entries(groups["all"], fractions, seed)
        return train, val, test if fractions[2] > 0 else None
    train, val = groups["train"], groups.get("validation")
    if val is None:
        train, val, _ = _split_entries(train, (1 - AUTO_VALIDATION_FRACTION, AUTO_VALIDATION_FRACTION, 0.0), seed)
    return train, val, groups.get("test")


def _split_entries(entries: list[Entry], fractions: tuple[float, float, float], seed: int) -> list[list[Entry]]:
    """Seeded train/validation/test split, stratified by class, in which every class keeps a training image."""
    if not entries:
        return [[], [], []]
    n_val, n_test = (max(1, round(fraction * len(entries))) if fraction > 0 else 0 for fraction in fractions[1:])
    classes = np.array([cls for _, cls in entries])
    rng = np.random.default_rng(seed)
    reserved = np.array([rng.choice(np.flatnonzero(classes == cls)) for cls in np.unique(classes)])
    pool = np.setdiff1d(np.arange(len(entries)), reserved)
    if n_val + n_test >= len(pool):
        raise TransferlabError(f"{len(entries)} images are too few to split {fractions} "
                               "with a training image per class",
                               hint="add images, or use split=(0.8, 0.2, 0) to test on the validation set")
    rest, test = _holdout(pool, classes, n_test, seed)
    train, val = _holdout(rest, classes, n_val, seed)
    return [[entries[i] for i in indices] for indices in (np.concatenate([train, reserved]), val, test)]


def _holdout(indices: np.ndarray, classes: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) with `size` held out: stratified by class where sklearn can."""
    if size == 0:
        return indices, indices[:0]
    try:
        kept, held = train_test_split(indices, test_size=size, random_state=seed, stratify=classes[indices])
    except ValueError:  # a class too small to stratify (sklearn needs two per class): plain random split
        kept, held = train_test_split(indices, test_size=size, random_state=seed)
    return kept, held


def _subset(entries: list[Entry], class_index: dict[str, int]) -> Subset:
    entries = sorted(entries)
    return Subset([path for path, _ in entries], np.array([class_index[cls] for _, cls in entries], dtype=np.int64))


def _drop(subset: Subset, dropped: Mapping[Path, str]) -> Subset:
    keep = np.array([path not in dropped for path in subset.paths], dtype=bool)
    return Subset([path for path, kept in zip(subset.paths, keep) if kept], subset.labels[keep])


def _check_usable(dataset: DatasetSplit) -> None:
    untrainable = [cls for cls, counts in dataset.class_counts().items() if counts["train"] == 0]
    if untrainable:
        raise TransferlabError(
            f"{len(untrainable)} class(es) have no usable training images: {listing(untrainable)}",
            hint="add images to them or leave them out (--exclude NAME, or exclude=[...] in Python); unreadable files "
                 "are listed in skipped.csv",
        )
    for name, subset in dataset.subsets().items():
        if not len(subset):
            raise TransferlabError(f"the {name} split is empty",
                                   hint=f"add images to the {name} folder or list, or remove it (or use more images)")



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
import math
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from rich.table import Table
from sklearn.model_selection import train_test_split

from transferlab.decoding import IMAGE_EXTENSIONS, ImageDecodeError, opened
from transferlab.errors import TransferlabError
from transferlab.files import memoized_file_digest



SPLITS = ("train", "validation", "test")
SPLIT_FOLDER_ALIASES = {
    "train": ("train", "training", "training_set"),
    "validation": ("validation", "val", "valid"),
    "test": ("test", "testing", "test_set"),
}
SPLIT_LIST_FILES = {"train": ("train.txt",), "validation": ("val.txt", "validation.txt"), "test": ("test.txt",)}
SPLIT_ORDER = ("test", "validation", "train", "all")  # which copy of a duplicated image is kept: the first
AUTO_VALIDATION_FRACTION = 0.15  # share of train held out when a layout brings no validation set

_Entry = tuple[Path, str]  # (absolute image path, class name)


@dataclass(frozen=True)
class Skipped:
    """A file left out of the dataset, and why."""

    path: str
    reason: str


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
                    writer.writerow([name, _relative(image, self.root), self.classes[label]])

    def write_skipped_csv(self, path: Path | str) -> None:
        with Path(path).open("w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(["path", "reason"])
            writer.writerows([_relative(Path(item.path), self.root), item.reason] for item in self.skipped)

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
) -> DatasetSplit:
    """Find the images under `data`, check them cheaply and split them (see the module docstring for layouts).

    `split` (train, validation, test fractions) applies to the folders layout only; `max_per_class` caps each
    class within each split source (a seeded random subset); `include`/`exclude` select classes by name.
    """
    root = _data_folder(data)
    fractions = _check_fractions(split)
    if max_per_class is not None and (not isinstance(max_per_class, int) or max_per_class < 1):
        raise TransferlabError(f"max_per_class must be a positive whole number, got {max_per_class!r}",
                               hint="e.g. max_per_class=50, or leave it out to use every image")
    if split_csv is not None:
        if include is not None or exclude is not None or max_per_class is not None:
            raise TransferlabError(
                "split_csv fixes the classes and files; include, exclude and max_per_class cannot be combined with it",
                hint="drop those options: the split file already reflects them",
            )
        layout, classes, groups = _read_split_csv(Path(split_csv), root)
    else:
        layout, classes, groups = _discover(root)
    classes = _select_classes(classes, _names(include), _names(exclude))
    chosen = set(classes)
    groups, skipped = _checked({name: [e for e in entries if e[1] in chosen] for name, entries in groups.items()})
    _check_disjoint(groups)  # one path listed in two splits: the lists contradict each other
    groups, duplicates = _without_duplicates(groups, root)
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
    _check_usable(dataset)
    return dataset


def _data_folder(data: Path | str) -> Path:
    root = Path(data).expanduser().absolute()
    if not root.exists():
        raise TransferlabError(f"data folder not found: {root}",
                               hint="pass a folder with one subfolder of images per class")
    if not root.is_dir():
        raise TransferlabError(f"data must be a folder, got the file {root}",
                               hint="pass a folder with one subfolder of images per class (unpack archives first)")
    return root


def _check_fractions(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(fraction) for fraction in split)
    except (TypeError, ValueError):
        values = ()
    valid = len(values) == 3 and min(values) >= 0 and math.isclose(sum(values), 1.0, abs_tol=1e-6)
    if not valid or values[0] == 0 or values[1] == 0:
        raise TransferlabError(
            f"invalid split fractions {split!r}: need (train, validation, test), each >= 0, summing to 1, "
            "with train and validation above 0",
            hint="e.g. split=(0.7, 0.15, 0.15), or (0.8, 0.2, 0) to test on the validation set",
        )
    return values  # type: ignore[return-value]


def _names(names: Iterable[str] | None) -> set[str] | None:
    if names is None:
        return None
    return {names} if isinstance(names, str) else set(names)


def _listing(names: Iterable[str], limit: int = 20) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def _visible(name: str) -> bool:
    """Hidden entries (.DS_Store, .git) and tool folders (__MACOSX, __pycache__) are never data."""
    return not name.startswith((".", "__"))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if _visible(child.name) and child.is_dir())


def _files_under(folder: Path) -> list[Path]:
    """Every visible file below folder (any depth, symlinks followed), sorted. A folder reached twice (a link
    loop such as `ln -s . self`, or two links to one folder) is walked once."""
    found, walked = [], set()
    for parent, dirnames, filenames in os.walk(folder, followlinks=True):
        info = os.stat(parent)
        if (info.st_dev, info.st_ino) in walked:
            dirnames[:] = []
            continue
        walked.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(name for name in dirnames if _visible(name))
        found += [Path(parent, name) for name in filenames if _visible(name)]
    return sorted(found)


def _scan_classes(folder: Path) -> tuple[list[str], list[_Entry]]:
    class_folders = _subfolders(folder)
    return [d.name for d in class_folders], [(path, d.name) for d in class_folders for path in _files_under(d)]


def _discover(root: Path) -> tuple[str, list[str], dict[str, list[_Entry]]]:
    """Detect the layout of root: (layout, class names, entries per split; "all" when still to be split)."""
    split_folders = _split_folders(root)
    if split_folders:
        classes: set[str] = set()
        groups = {}
        for name, folder in split_folders.items():
            found, groups[name] = _scan_classes(folder)
            classes.update(found)
        return "presplit", sorted(classes), groups
    list_files = _split_list_files(root)
    if list_files:
        groups = _read_split_lists(root, list_files)
        return "lists", sorted({cls for entries in groups.values() for _, cls in entries}), groups
    classes_found, entries = _scan_classes(root)
    return "folders", classes_found, {"all": entries}


def _split_folders(root: Path) -> dict[str, Path]:
    """Pre-split folders by split name, recognised by their aliases (any letter case); {} if there are none."""
    split_of = {alias: split for split, aliases in SPLIT_FOLDER_ALIASES.items() for alias in aliases}
    found: dict[str, Path] = {}
    others = []
    for folder in _subfolders(root):
        split = split_of.get(folder.name.lower())
        if split is None:
            others.append(folder.name)
        elif split in found:
            raise TransferlabError(f"two {split} folders in {root}: {found[split].name} and {folder.name}",
                                   hint="merge them into one folder")
        else:
            found[split] = folder
    if found and "train" not in found:
        raise TransferlabError(f"found {_listing(f.name for f in found.values())} in {root} but no training folder",
                               hint="name the training folder train (or training, training_set)")
    if found and others:
        raise TransferlabError(f"split folders ({_listing(f.name for f in found.values())}) sit beside other folders "
                               f"({_listing(others)}) in {root}",
                               hint="put every class folder inside train/ (and validation/, test/), "
                                    "or remove the extra folders")
    return found


def _split_list_files(root: Path) -> dict[str, Path]:
    """Split list files by split name; {} if root holds neither train.txt nor test.txt."""
    found: dict[str, Path] = {}
    for split, names in SPLIT_LIST_FILES.items():
        present = [root / name for name in names if (root / name).is_file()]
        if len(present) > 1:
            raise TransferlabError(f"both {present[0].name} and {present[1].name} in {root}", hint="keep one of them")
        if present:
            found[split] = present[0]
    if found and not {"train", "test"} <= found.keys():
        missing = "test.txt" if "train" in found else "train.txt"
        raise TransferlabError(f"{root} has split lists but no {missing}",
                               hint="a split-list layout needs train.txt and test.txt (val.txt is optional)")
    return found


def _read_split_lists(root: Path, list_files: dict[str, Path]) -> dict[str, list[_Entry]]:
    relative = {split: _read_list(path) for split, path in list_files.items()}
    base = _list_base(root, [path for paths in relative.values() for path in paths])
    return {split: [(base / path, path.parent.name) for path in paths] for split, paths in relative.items()}


def _read_list(list_file: Path) -> list[Path]:
    lines = [line.strip().replace("\\", "/") for line in list_file.read_text(encoding="utf-8").splitlines()]
    paths = [Path(line) for line in lines if line and not line.startswith("#")]
    orphan = next((path for path in paths if not path.parent.name), None)
    if orphan is not None:
        raise TransferlabError(f"{list_file.name}: {orphan} has no class folder",
                               hint="each line must be a path like <class>/<image>, relative to the list's folder")
    return paths


def _list_base(root: Path, paths: list[Path]) -> Path:
    """Folder the listed paths are relative to: root, or else the one subfolder holding them (Caltech-101)."""
    candidates = [root] + _subfolders(root)
    holders = [base for base in candidates if any((base / path).exists() for path in paths)]
    if not holders:
        raise TransferlabError(f"none of the files named in the split lists exist under {root} or its subfolders",
                               hint="list paths like <class>/<image>, relative to the folder holding train.txt")
    if holders[0] != root and len(holders) > 1:
        raise TransferlabError(f"the split lists match files in several subfolders of {root}: "
                               f"{_listing(h.name for h in holders)}",
                               hint="make the listed paths relative to the folder holding train.txt")
    return holders[0]


def _read_split_csv(csv_path: Path, root: Path) -> tuple[str, list[str], dict[str, list[_Entry]]]:
    if not csv_path.is_file():
        raise TransferlabError(f"split file not found: {csv_path}", hint="pass the split.csv written by a previous run")
    with csv_path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if not {"split", "path", "class"} <= set(reader.fieldnames or ()):
            raise TransferlabError(f"{csv_path} lacks the columns split,path,class",
                                   hint="pass the split.csv written by a previous run")
        rows = list(reader)
    unknown = sorted({row["split"] for row in rows} - set(SPLITS))
    if unknown:
        raise TransferlabError(f"{csv_path} names unknown splits: {_listing(unknown)}",
                               hint=f"splits are {', '.join(SPLITS)}")
    groups: dict[str, list[_Entry]] = defaultdict(list)
    for row in rows:
        groups[row["split"]].append((root / row["path"], row["class"]))
    if "train" not in groups:
        raise TransferlabError(f"{csv_path} has no train rows", hint="pass the split.csv written by a previous run")
    if not any(path.exists() for entries in groups.values() for path, _ in entries):
        raise TransferlabError(f"none of the files in {csv_path} exist under {root}",
                               hint="pass the same data folder the split was made from")
    return "csv", sorted({row["class"] for row in rows}), dict(groups)


def _select_classes(available: list[str], include: set[str] | None, exclude: set[str] | None) -> list[str]:
    unknown = sorted(((include or set()) | (exclude or set())) - set(available))
    if unknown:
        raise TransferlabError(f"unknown class name(s): {_listing(unknown)}",
                               hint=f"available classes: {_listing(available, 200)}")
    chosen = [cls for cls in available if (include is None or cls in include) and cls not in (exclude or set())]
    if len(chosen) < 2:
        found = f"{len(chosen)}: {_listing(chosen)}" if chosen else "none"
        raise TransferlabError(f"need at least two classes, found {found}",
                               hint="give each class its own subfolder (data/<class>/<image>); "
                                    "include/exclude must leave two or more")
    return chosen


def _checked(groups: dict[str, list[_Entry]]) -> tuple[dict[str, list[_Entry]], list[Skipped]]:
    """Entries whose files pass the cheap checks, and the others as Skipped with reasons."""
    kept: dict[str, list[_Entry]] = {}
    skipped = []
    for name, entries in groups.items():
        kept[name] = []
        for entry in entries:
            reason = _skip_reason(entry[0])
            if reason is None:
                kept[name].append(entry)
            else:
                skipped.append(Skipped(str(entry[0]), reason))
    return kept, skipped


def _without_duplicates(groups: dict[str, list[_Entry]], root: Path) -> tuple[dict[str, list[_Entry]], list[Skipped]]:
    """One copy of each image: the same file reached by two paths (links), or byte-identical files, anywhere in
    the data set. An image in two splits would be tested on what was trained on; in two classes its label is
    ambiguous. The copy kept is the first in the order test, validation, train (evaluation sets stay as given),
    then a file at its own place before one reached through a link, then by path; the others are reported as
    skipped, naming the copy kept."""
    order = sorted(groups, key=lambda name: SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER))
    entries = [(name, entry) for name in order for entry in sorted(groups[name], key=_linked_last)]
    sizes = Counter(os.path.getsize(entry[0]) for _, entry in entries)
    first_with: dict[str, tuple[str, _Entry]] = {}  # "path:..." / "content:..." -> the copy kept
    kept: dict[str, list[_Entry]] = {name: [] for name in groups}
    skipped = []
    for name, entry in entries:
        path, cls = entry
        identities = [f"path:{os.path.realpath(path)}"]
        if sizes[os.path.getsize(path)] > 1:  # only a file sharing its size with another can be a copy: hash it
            identities.append(f"content:{memoized_file_digest(path)}")
        first = next((first_with[i] for i in identities if i in first_with), None)
        if first is None:
            first_with.update(dict.fromkeys(identities, (name, entry)))
            kept[name].append(entry)
            continue
        where = "another class" if first[1][1] != cls else "another split" if first[0] != name else "the same class"
        skipped.append(Skipped(str(path), f"duplicate of {_relative(first[1][0], root)} ({where})"))
    return kept, skipped


def _linked_last(entry: _Entry) -> tuple[bool, _Entry]:
    """Sort key: a file reached through a link after one at its own place, then by path."""
    path = entry[0]
    return os.path.realpath(path) != os.path.abspath(path), entry


def _skip_reason(path: Path) -> str | None:
    """Why path is no usable image, from its extension, stat and image header (no full decode: fast)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    suffix = path.suffix.lower()
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if suffix not in IMAGE_EXTENSIONS:
        return f"unsupported extension {suffix or '(none)'}"
    if info.st_size == 0:
        return "empty file"
    try:
        with opened(path):
            return None
    except ImageDecodeError as exc:
        return exc.message


def _capped(entries: list[_Entry], max_per_class: int, seed: int) -> list[_Entry]:
    """At most max_per_class entries of each class: a seeded random subset of the sorted entries."""
    rng = np.random.default_rng(seed)
    by_class: dict[str, list[_Entry]] = defaultdict(list)
    for entry in sorted(entries):
        by_class[entry[1]].append(entry)
    kept = []
    for cls in sorted(by_class):
        items = by_class[cls]
        if len(items) > max_per_class:
            items = [items[i] for i in sorted(rng.choice(len(items), max_per_class, replace=False))]
        kept += items
    return kept


def _check_disjoint(groups: dict[str, list[_Entry]]) -> None:
    uses = Counter(path for entries in groups.values() for path in {path for path, _ in entries})
    shared = sorted(path for path, count in uses.items() if count > 1)
    if shared:
        raise TransferlabError(f"{len(shared)} file(s) belong to more than one split, e.g. {shared[0]}",
                               hint="each image must be in exactly one of train, validation and test")


def _assign(groups: dict[str, list[_Entry]], fractions: tuple[float, float, float], seed: int
            ) -> tuple[list[_Entry], list[_Entry], list[_Entry] | None]:
    """(train, validation, test) entries; test is None when the validation set doubles as the test set."""
    if "all" in groups:
        train, val, test = _split_entries(groups["all"], fractions, seed)
        return train, val, test if fractions[2] > 0 else None
    train, val = groups["train"], groups.get("validation")
    if val is None:
        train, val, _ = _split_entries(train, (1 - AUTO_VALIDATION_FRACTION, AUTO_VALIDATION_FRACTION, 0.0), seed)
    return train, val, groups.get("test")


def _split_entries(entries: list[_Entry], fractions: tuple[float, float, float], seed: int) -> list[list[_Entry]]:
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


def _subset(entries: list[_Entry], class_index: dict[str, int]) -> Subset:
    entries = sorted(entries)
    return Subset([path for path, _ in entries], np.array([class_index[cls] for _, cls in entries], dtype=np.int64))


def _drop(subset: Subset, dropped: Mapping[Path, str]) -> Subset:
    keep = np.array([path not in dropped for path in subset.paths], dtype=bool)
    return Subset([path for path, kept in zip(subset.paths, keep) if kept], subset.labels[keep])


def _check_usable(dataset: DatasetSplit) -> None:
    untrainable = [cls for cls, counts in dataset.class_counts().items() if counts["train"] == 0]
    if untrainable:
        raise TransferlabError(
            f"{len(untrainable)} class(es) have no usable training images: {_listing(untrainable)}",
            hint="add images to them or leave them out with exclude=[...]; unreadable files are listed in skipped",
        )
    for name, subset in dataset.subsets().items():
        if not len(subset):
            raise TransferlabError(f"the {name} split is empty",
                                   hint=f"add images to the {name} folder or list, or remove it (or use more images)")


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)

"""Finding the images of a data set: the layout (class folders, pre-split folders, split lists, an earlier run's
split.csv), the scan (every real file once: folder links followed, loops walked once), cheap checks of each file
(extension, size, image header) and one copy of each image (duplicates are reported, not silently kept)."""

from __future__ import annotations

import csv
import os
import stat
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from transferlab.core.errors import TransferlabError
from transferlab.core.files import memoized_file_digest
from transferlab.data.decoding import IMAGE_EXTENSIONS, ImageDecodeError, opened

SPLITS = ("train", "validation", "test")
SPLIT_FOLDER_ALIASES = {
    "train": ("train", "training", "training_set"),
    "validation": ("validation", "val", "valid"),
    "test": ("test", "testing", "test_set"),
}
SPLIT_LIST_FILES = {"train": ("train.txt",), "validation": ("val.txt", "validation.txt"), "test": ("test.txt",)}
SPLIT_ORDER = ("test", "validation", "train", "all")  # which copy of a duplicated image is kept: the first
Entry = tuple[Path, str]  # (absolute image path, class name)


@dataclass(frozen=True)
class Skipped:
    """A file left out of the dataset, and why."""

    path: str
    reason: str


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def listing(names: Iterable[str], limit: int = 20) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def discover(root: Path) -> tuple[str, list[str], dict[str, list[Entry]]]:
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


def _visible(name: str) -> bool:
    """Hidden entries (.DS_Store, .git) and tool folders (__MACOSX, __pycache__) are never data."""
    return not name.startswith((".", "__"))


def _subfolders(folder: Path) -> list[Path]:
    return sorted(child for child in folder.iterdir() if _visible(child.name) and child.is_dir())


def files_under(folder: Path) -> list[Path]:
    """Every visible file below folder (any depth, symlinks followed), sorted: the one walk of every command
    that lists images (train, evaluate, embed, predict). A folder reached twice (a link loop such as
    `ln -s . self`, or two links to one folder) is walked once."""
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


def _scan_classes(folder: Path) -> tuple[list[str], list[Entry]]:
    class_folders = _subfolders(folder)
    return [d.name for d in class_folders], [(path, d.name) for d in class_folders for path in files_under(d)]


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
        raise TransferlabError(f"found {listing(f.name for f in found.values())} in {root} but no training folder",
                               hint="name the training folder train (or training, training_set)")
    if found and others:
        raise TransferlabError(f"split folders ({listing(f.name for f in found.values())}) sit beside other folders "
                               f"({listing(others)}) in {root}",
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


def _read_split_lists(root: Path, list_files: dict[str, Path]) -> dict[str, list[Entry]]:
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
                               f"{listing(h.name for h in holders)}",
                               hint="make the listed paths relative to the folder holding train.txt")
    return holders[0]


def read_split_csv(csv_path: Path, root: Path) -> tuple[str, list[str], dict[str, list[Entry]]]:
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
        raise TransferlabError(f"{csv_path} names unknown splits: {listing(unknown)}",
                               hint=f"splits are {', '.join(SPLITS)}")
    groups: dict[str, list[Entry]] = defaultdict(list)
    for row in rows:
        groups[row["split"]].append((root / row["path"], row["class"]))
    if "train" not in groups:
        raise TransferlabError(f"{csv_path} has no train rows", hint="pass the split.csv written by a previous run")
    if not any(path.exists() for entries in groups.values() for path, _ in entries):
        raise TransferlabError(f"none of the files in {csv_path} exist under {root}",
                               hint="pass the same data folder the split was made from")
    return "csv", sorted({row["class"] for row in rows}), dict(groups)


def check_disjoint(groups: dict[str, list[Entry]]) -> None:
    uses = Counter(path for entries in groups.values() for path in {path for path, _ in entries})
    shared = sorted(path for path, count in uses.items() if count > 1)
    if shared:
        raise TransferlabError(f"{len(shared)} file(s) belong to more than one split, e.g. {shared[0]}",
                               hint="each image must be in exactly one of train, validation and test")


def checked(groups: dict[str, list[Entry]]) -> tuple[dict[str, list[Entry]], list[Skipped]]:
    """Entries whose files pass the cheap checks, and the others as Skipped with reasons."""
    kept: dict[str, list[Entry]] = {}
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


def without_duplicates(groups: dict[str, list[Entry]], root: Path) -> tuple[dict[str, list[Entry]], list[Skipped]]:
    """One copy of each image: the same file reached by two paths (links), or byte-identical files, anywhere in
    the data set. An image in two splits would be tested on what was trained on; in two classes its label is
    ambiguous. The copy kept is the first in the order test, validation, train (evaluation sets stay as given),
    then a file at its own place before one reached through a link, then by path; the others are reported as
    skipped, naming the copy kept."""
    order = sorted(groups, key=lambda name: SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER))
    entries = [(name, entry) for name in order for entry in sorted(groups[name], key=_linked_last)]
    sizes = Counter(os.path.getsize(entry[0]) for _, entry in entries)
    first_with: dict[str, tuple[str, Entry]] = {}  # "path:..." / "content:..." -> the copy kept
    kept: dict[str, list[Entry]] = {name: [] for name in groups}
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
        skipped.append(Skipped(str(path), f"duplicate of {relative(first[1][0], root)} ({where})"))
    return kept, skipped


def _linked_last(entry: Entry) -> tuple[bool, Entry]:
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


def folder_images(folder: Path) -> list[Path]:
    """The image files below `folder` (by extension), as `files_under` walks it."""
    return [path for path in files_under(folder) if path.suffix.lower() in IMAGE_EXTENSIONS]


def image_files(sources: list[Path]) -> list[Path]:
    """Files as given; folders expanded to the image files inside them (recursively, sorted)."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files.extend(folder_images(source))
        elif source.exists():
            files.append(source)
        else:
            raise TransferlabError(f"no such file or folder: {source}")
    if not files:
        raise TransferlabError("no image files found", hint="pass image files or folders that contain images")
    return files

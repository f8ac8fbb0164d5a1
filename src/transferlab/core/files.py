"""Files: the one place that writes artifacts (atomically) and hashes them.

Every artifact goes through `atomic_path`: it is written to a temporary file in the destination folder and
renamed over the destination only when complete, so a reader (or a run killed with kill -9) never sees half a
file.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transferlab.core.errors import TransferlabError


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC, or a library's own error saying so (safetensors, SQLite)."""
    text = str(exc).lower()
    return getattr(exc, "errno", None) == errno.ENOSPC or "no space left" in text or "disk is full" in text


def disk_full_error(path: Path, needed_bytes: int = 0) -> TransferlabError:
    """The one line for a full disk: the path, the space the write needed (when known) and the space free."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    free = shutil.disk_usage(existing).free / 1e6
    needs = f"needs about {needed_bytes / 1e6:.1f} MB, " if needed_bytes else ""
    error = TransferlabError(
        f"no space left on the device writing {path} ({needs}{free:.1f} MB free there)",
        hint="free some space, or write elsewhere (--out, $TRANSFERLAB_CACHE), and run again: nothing half-written was kept",
    )
    error.needed_bytes = needed_bytes  # kept when an outer block (a staged run folder) renames the path
    return error


@contextmanager
def disk_full_as_error(path: Path, needed_bytes: int = 0) -> Iterator[None]:
    """A full disk inside the block becomes one clear TransferlabError naming `path` (and `needed_bytes`, or
    what an inner block reported)."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(path, needed_bytes or getattr(exc, "needed_bytes", 0)) from exc
        raise


@contextmanager
def atomic_path(path: Path, size: int = 0) -> Iterator[Path]:
    """A temporary path beside `path`; when the block succeeds it replaces `path`, when it fails it is removed.
    `size`, when known (or estimated), is what a full-disk error says the file needs."""
    with disk_full_as_error(path, size):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o644)  # mkstemp makes files private (0600); artifacts are meant to be shared
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    with atomic_path(path, len(data)) as tmp, open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return path


def file_digest(path: Path, length: int = 32) -> str:
    """The first `length` hex digits of the file's blake2b hash."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "blake2b").hexdigest()[:length]


def bytes_digest(data: bytes, length: int = 32) -> str:
    """file_digest of bytes already read: an engine that reads each file once hashes and decodes the same bytes."""
    return hashlib.blake2b(data).hexdigest()[:length]


def memoized_file_digest(path: Path, length: int = 32) -> str:
    """file_digest, remembered while the file's size and modification time stay the same: within a run an
    image is hashed once (duplicate detection, then its feature cache key), a weights file once per key."""
    stat = os.stat(path)
    return _memoized(os.path.realpath(path), stat.st_mtime_ns, stat.st_size, length)


@functools.lru_cache(maxsize=1 << 17)
def _memoized(path: Path, mtime_ns: int, size: int, length: int) -> str:
    return file_digest(path, length)

"""Files: the one place that writes artifacts (atomically) and hashes them.

Every artifact goes through `atomic_path`: it is written to a temporary file in the destination folder and
renamed over the destination only when complete, so a reader (or a run killed with kill -9) never sees half a
file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; when the block succeeds it replaces `path`, when it fails it is removed."""
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
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    return path


def file_digest(path: Path, length: int = 32) -> str:
    """The first `length` hex digits of the file's blake2b hash."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "blake2b").hexdigest()[:length]


def memoized_file_digest(path: Path, length: int = 32) -> str:
    """file_digest, remembered while the file's size and modification time stay the same: within a run an
    image is hashed once (duplicate detection, then its feature cache key), a weights file once per key."""
    stat = os.stat(path)
    return _memoized(os.path.realpath(path), stat.st_mtime_ns, stat.st_size, length)


@functools.lru_cache(maxsize=1 << 17)
def _memoized(path: Path, mtime_ns: int, size: int, length: int) -> str:
    return file_digest(path, length)

"""Files: the one place that writes artifacts (atomically) and hashes them.

Every artifact goes through `atomic_path`: it is written to a temporary file in the destination folder and
renamed over the destination only when complete, so a reader (or a run killed with kill -9) never sees half a
file. A full disk, wherever it strikes (here, in the feature cache, in a run folder), becomes one line naming
the path, the space needed and the space free (`no_space_error`), and leaves no partial file behind.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from transferlab.errors import TransferlabError


def no_space_error(path: Path, needed_bytes: int, lower_bound: bool = False) -> TransferlabError:
    """The one-line error for a full disk: where, how much was needed (about, or more than what had been
    written when the disk filled) and how much is free."""
    folder = next((p for p in (Path(path), *Path(path).parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    needs = f"needs more than {_mb(needed_bytes)}" if lower_bound else f"needs about {_mb(needed_bytes)}"
    return TransferlabError(
        f"no space left on device writing {path} ({needs}, {_mb(free)} free)",
        hint=f"free some space on the disk holding {folder} (or write elsewhere) and run again",
    )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def is_no_space(exc: BaseException) -> bool:
    """A full disk, as the OS says it (ENOSPC, EDQUOT) or as a library rewords it (safetensors, ONNX)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "no space left" in str(exc).lower() or "disk is full" in str(exc).lower()


@contextmanager
def disk_space_guard(
    path: Path, needed_bytes: Callable[[], int] = lambda: 0, lower_bound: bool = True
) -> Iterator[None]:
    """Turn a full-disk failure inside the block into `no_space_error(path, needed_bytes(), lower_bound)`."""
    try:
        yield
    except TransferlabError:
        raise
    except Exception as exc:
        if is_no_space(exc):
            raise no_space_error(path, needed_bytes(), lower_bound) from exc
        raise


@contextmanager
def atomic_path(path: Path, size: int = 0) -> Iterator[Path]:
    """A temporary path beside `path`; when the block succeeds it replaces `path`, when it fails it is removed.
    `size`, when known (or estimated), is what a full-disk error reports as needed; else the size written
    when the disk filled, as a lower bound."""
    with disk_space_guard(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o644)  # mkstemp makes files private (0600); artifacts are meant to be shared
    try:
        with disk_space_guard(path, lambda: size or (tmp.stat().st_size if tmp.exists() else 0), not size):
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


def memoized_file_digest(path: Path, length: int = 32) -> str:
    """file_digest, remembered while the file's size and modification time stay the same: within a run an
    image is hashed once (duplicate detection, then its feature cache key), a weights file once per key."""
    stat = os.stat(path)
    return _memoized(os.path.realpath(path), stat.st_mtime_ns, stat.st_size, length)


@functools.lru_cache(maxsize=1 << 17)
def _memoized(path: Path, mtime_ns: int, size: int, length: int) -> str:
    return file_digest(path, length)

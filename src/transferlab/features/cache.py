"""The feature cache: vectors in one SQLite file per extractor, keyed by image content (and augmentation view).

Each batch is written in one transaction, so a run killed with kill -9 loses at most the batch in flight. What
is read is verified: the file must pass SQLite's quick_check (else it is moved aside and rebuilt), and each
record must match the checksum stored with it, hold finite values and have the length of its neighbours (else
it is deleted and recomputed). A damaged cache costs time, never a wrong model.
"""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferlab.core.errors import TransferlabError, warn
from transferlab.core.files import disk_full_as_error, disk_full_error, is_disk_full

TABLE = "vectors"  # with a checksum per record; the earlier "features" table (no checksum) is left unread


def checksum(blob: bytes) -> str:
    # CRC-32 catches flipped bits, the damage a cache meets, at a third of blake2b's cost on a warm read
    # (20,000 records of 1280 floats: 0.27-0.36 s vs 0.83-1.13 s); tampering is not what it guards against.
    return f"{zlib.crc32(blob):08x}"


class FeatureCache:
    def __init__(self, path: Path, dtype: type = np.float32):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dtype = np.dtype(dtype)
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if not_damage(exc):
                raise self._unusable(exc) from exc
            self._move_aside(exc)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, vector BLOB NOT NULL, checksum TEXT NOT NULL)")
            db.commit()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _move_aside(self, exc: sqlite3.DatabaseError) -> None:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, Path(f"{aside}{suffix}"))
        lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("***")]
        reason = lines[0][:100] if lines else type(exc).__name__  # quick_check lists every damaged cell
        warn(f"the feature cache {self.path} is damaged ({reason}); moved to {aside.name} and rebuilt")

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of `keys` that pass verification; damaged ones are deleted (and so recomputed)."""
        found: dict[str, np.ndarray] = {}
        damaged: list[str] = []
        try:
            for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT key, vector, checksum FROM {TABLE} WHERE key IN ({marks})"
                for key, blob, stored in self._db.execute(query, chunk):
                    vector = np.frombuffer(blob, dtype=self.dtype) if len(blob) % self.dtype.itemsize == 0 else None
                    if vector is None or checksum(blob) != stored or not np.isfinite(vector).all():
                        damaged.append(key)
                    else:
                        found[key] = vector
        except sqlite3.DatabaseError as exc:
            if not_damage(exc):
                raise self._unusable(exc) from exc
            # damage past quick_check's notice: start afresh, so everything is recomputed
            self._db.close()
            self._move_aside(exc)
            self._db = self._open()
            return {}
        damaged += _odd_lengths(found)
        if damaged:
            for key in damaged:
                found.pop(key, None)
            with self._db:
                self._db.executemany(f"DELETE FROM {TABLE} WHERE key = ?", [(key,) for key in damaged])
            warn(f"{len(damaged)} damaged record(s) in the feature cache {self.path.name} discarded; recomputing them")
        return found

    def present(self, keys: Sequence[str]) -> set[str]:
        """Which of `keys` have a record, without reading the vectors (a distributed engine skips these); a
        damaged record still counts and is found (and recomputed) when `get_many` reads it."""
        found: set[str] = set()
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            found.update(key for (key,) in self._db.execute(f"SELECT key FROM {TABLE} WHERE key IN ({marks})", chunk))
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        rows = []
        for key, vector in items.items():
            blob = np.ascontiguousarray(vector, dtype=self.dtype).tobytes()
            rows.append((key, blob, checksum(blob)))
        needed = sum(len(blob) for _, blob, _ in rows)
        with disk_full_as_error(self.path, needed), self._db:  # one transaction: all of the batch or nothing
            self._db.executemany(f"INSERT OR REPLACE INTO {TABLE} (key, vector, checksum) VALUES (?, ?, ?)", rows)

    def _unusable(self, exc: sqlite3.DatabaseError) -> TransferlabError:
        if is_disk_full(exc):
            return disk_full_error(self.path)
        return TransferlabError(f"cannot use the feature cache {self.path}: {exc}", hint="is another run writing it?")

    def __len__(self) -> int:
        return self._db.execute(f"SELECT COUNT(*) FROM {TABLE}").fetchone()[0]

    def close(self) -> None:
        self._db.close()


def not_damage(exc: sqlite3.DatabaseError) -> bool:
    """A full disk or another process holding a lock: the file is sound, so it must not be moved aside."""
    name = getattr(exc, "sqlite_errorname", "")
    return name.startswith(("SQLITE_FULL", "SQLITE_BUSY", "SQLITE_LOCKED")) or is_disk_full(exc) or "locked" in str(exc)


def _odd_lengths(found: dict[str, np.ndarray]) -> list[str]:
    """Keys whose vectors are not of the length most of them share (one extractor: one width)."""
    if not found:
        return []
    usual, _ = Counter(len(v) for v in found.values()).most_common(1)[0]
    return [key for key, vector in found.items() if len(vector) != usual]

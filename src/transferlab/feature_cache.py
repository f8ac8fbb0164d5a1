"""The feature cache: vectors in one SQLite file per extractor, keyed by image content (and augmentation view).

Each batch is written in one transaction, so a run killed with kill -9 loses at most the batch in flight.
Nothing read back is trusted: the file passes SQLite's quick_check when opened (a damaged one is moved aside
to *.corrupt and rebuilt), and every record carries a checksum of its bytes and must decode to a finite vector
of the cache's length; a record that fails is dropped, so the caller recomputes it. Each repair prints one
warning line.
"""

from __future__ import annotations

import os
import sqlite3
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from transferlab.errors import TransferlabError, warn
from transferlab.files import disk_space_guard, no_space_error

TABLE = "features_v2"  # v2: a CRC-32 per record; the unchecked v1 table ("features") is dropped on open


def record_checksum(blob: bytes) -> int:
    """CRC-32: made for catching flipped bits (not for adversaries), and 5x faster than blake2b here, which
    matters when a warm run reads tens of thousands of records."""
    return zlib.crc32(blob)


class FeatureCache:
    def __init__(self, path: Path, dtype: type = np.float32):
        with disk_space_guard(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dtype = np.dtype(dtype)
        try:
            self._db = self._open()
        except sqlite3.OperationalError as exc:  # locked, or a full disk: the file itself may be fine
            raise self._operational_error(exc, 0) from exc
        except sqlite3.DatabaseError as exc:  # not a database, or malformed
            self._set_aside(exc)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False)
        try:
            (verdict,) = db.execute("PRAGMA quick_check").fetchone()
            if verdict != "ok":
                raise sqlite3.DatabaseError(verdict)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("DROP TABLE IF EXISTS features")  # v1 records carry no checksum: recomputed once
            db.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} "
                "(key TEXT PRIMARY KEY, vector BLOB NOT NULL, checksum INTEGER NOT NULL)"
            )
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.commit()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def _set_aside(self, exc: Exception) -> None:
        """Move a damaged database (and its WAL files) to *.corrupt so that a fresh one replaces it."""
        for suffix in ("", "-wal", "-shm"):
            source = Path(f"{self.path}{suffix}")
            if source.exists():
                os.replace(source, Path(f"{self.path}.corrupt{suffix}"))
        lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("***")]
        reason = lines[0][:100] if lines else type(exc).__name__  # quick_check lists every damaged cell
        warn(f"feature cache {self.path} is damaged ({reason}); moved aside to {self.path.name}.corrupt, rebuilding")

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The valid records among `keys`; damaged ones are deleted (and reported once) so they are recomputed."""
        found: dict[str, np.ndarray] = {}
        damaged: list[str] = []
        length = self._length()
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(f"SELECT key, vector, checksum FROM {TABLE} WHERE key IN ({marks})", chunk)
            for key, blob, checksum in rows:
                vector = self._decode(blob, checksum, length)
                if vector is None:
                    damaged.append(key)
                else:
                    found[key] = vector
        if damaged:
            self._delete(damaged)
            warn(f"feature cache {self.path.name}: {len(damaged)} damaged record(s) discarded, recomputing them")
        return found

    def _decode(self, blob: bytes, checksum: int, length: int | None) -> np.ndarray | None:
        if record_checksum(blob) != checksum or len(blob) % self.dtype.itemsize:
            return None
        vector = np.frombuffer(blob, dtype=self.dtype)
        if len(vector) != length or not np.isfinite(vector).all():
            return None
        return vector

    def _length(self) -> int | None:
        """The vector length this cache holds, recorded with the first batch (one extractor, one length)."""
        rows = self._query("SELECT value FROM meta WHERE name = 'length'")
        return int(rows[0][0]) if rows else None

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store finite vectors; a non-finite one means a broken trunk, which callers must catch before."""
        if not items:
            return
        length = np.size(next(iter(items.values())))
        rows = []
        for key, vector in items.items():
            blob = np.ascontiguousarray(vector, dtype=self.dtype).tobytes()
            rows.append((key, blob, record_checksum(blob)))
        try:
            with self._db:  # one transaction: all of the batch or nothing
                self._db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('length', ?)", (str(length),))
                self._db.executemany(f"INSERT OR REPLACE INTO {TABLE} (key, vector, checksum) VALUES (?, ?, ?)", rows)
        except sqlite3.OperationalError as exc:
            raise self._operational_error(exc, sum(len(blob) for _, blob, _ in rows)) from exc

    def _operational_error(self, exc: sqlite3.OperationalError, needed: int) -> Exception:
        if "full" in str(exc):  # "database or disk is full"
            return no_space_error(self.path, needed)
        return TransferlabError(f"cannot use the feature cache {self.path}: {exc}", hint="is another run writing it?")

    def _delete(self, keys: list[str]) -> None:
        with self._db:
            self._db.executemany(f"DELETE FROM {TABLE} WHERE key = ?", [(k,) for k in keys])

    def _query(self, sql: str, parameters: Sequence = ()) -> list[tuple]:
        """A read; damage found only now (past quick_check) sets the file aside and reads as empty, so
        everything is recomputed into a fresh one."""
        try:
            return self._db.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as exc:
            raise self._operational_error(exc, 0) from exc
        except sqlite3.DatabaseError as exc:
            self._db.close()
            self._set_aside(exc)
            self._db = self._open()
            return []

    def __len__(self) -> int:
        rows = self._query(f"SELECT COUNT(*) FROM {TABLE}")
        return rows[0][0] if rows else 0

    def close(self) -> None:
        self._db.close()

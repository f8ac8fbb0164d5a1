"""The feature cache: vectors in one SQLite file per extractor, keyed by image content (and augmentation view).

Each batch is written in one transaction, so a run killed with kill -9 loses at most the batch in flight.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class FeatureCache:
    def __init__(self, path: Path, dtype: type = np.float32):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.dtype = np.dtype(dtype)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._db.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(f"SELECT key, vector FROM features WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(blob, dtype=self.dtype)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        with self._db:  # one transaction: all of the batch or nothing
            self._db.executemany(
                "INSERT OR REPLACE INTO features (key, vector) VALUES (?, ?)",
                [(k, np.ascontiguousarray(v, dtype=self.dtype).tobytes()) for k, v in items.items()],
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM features").fetchone()[0]

    def close(self) -> None:
        self._db.close()

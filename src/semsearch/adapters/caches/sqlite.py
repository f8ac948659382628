"""Embedding cache in a SQLite file: float32 blobs by key, one query per batch."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semsearch.ports import Vectors

_BATCH = 900  # below SQLite's default limit of host parameters per statement


class SqliteEmbeddingCache:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS embeddings ("
                           "key TEXT PRIMARY KEY, dim INTEGER NOT NULL, vector BLOB NOT NULL"
                           ") WITHOUT ROWID")
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        found: dict[str, Vectors] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), _BATCH):
                part = unique[start:start + _BATCH]
                marks = ",".join("?" * len(part))
                rows = self._conn.execute(
                    f"SELECT key, dim, vector FROM embeddings WHERE key IN ({marks})", part)
                for key, dim, blob in rows:
                    vec = np.frombuffer(blob, dtype=np.float32)
                    if vec.shape[0] == dim and np.isfinite(vec).all():  # corrupt -> a miss
                        found[key] = vec
        return found

    def put_many(self, items: Mapping[str, Vectors]) -> None:
        rows = [(k, int(v.shape[0]), np.ascontiguousarray(v, dtype=np.float32).tobytes())
                for k, v in items.items()]
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR REPLACE INTO embeddings (key, dim, vector) VALUES (?, ?, ?)", rows)
            self._conn.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class NullEmbeddingCache:
    """``SEMSEARCH_CACHE_URL=none``: every lookup misses."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        return {}

    def put_many(self, items: Mapping[str, Vectors]) -> None:
        return None

    def close(self) -> None:
        return None

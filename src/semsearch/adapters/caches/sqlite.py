"""Embedding cache in a SQLite file: float32 blobs by key, one query per batch.

The cache is an optimisation, never a dependency. On a full disk it opens read-only (hits are
still served; see ``adapters.storage``) or, if even that fails, not at all (every lookup
misses); a write that fails for any reason is dropped with one warning naming the file and
the cause, and writes try the normal open again at most every ``retry_interval`` seconds, so
caching resumes by itself once space is freed."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from semsearch.adapters.storage import open_sqlite, write_error
from semsearch.errors import BackendError, StorageFullError
from semsearch.ports import Vectors

log = logging.getLogger("semsearch.cache")

_BATCH = 900  # below SQLite's default limit of host parameters per statement
_WHAT = "the embedding cache"


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS embeddings ("
                 "key TEXT PRIMARY KEY, dim INTEGER NOT NULL, vector BLOB NOT NULL"
                 ") WITHOUT ROWID")


class SqliteEmbeddingCache:
    def __init__(self, path: Path, retry_interval: float = 30.0) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._retry_interval = retry_interval
        self._warned = False
        self._conn: sqlite3.Connection | None = None
        # Set while writes cannot succeed (the disk is full): what the last attempt met.
        self._read_only: BackendError | None = None
        try:
            self._conn, self._read_only = open_sqlite(self._path, _WHAT, _setup)
        except StorageFullError as exc:  # not even readable: serve as an empty cache
            log.info("%s; serving as an empty cache", exc)
            self._read_only = exc
        self._retry_at = time.monotonic() + retry_interval

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        found: dict[str, Vectors] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            if self._conn is None:
                return found
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
            conn = self._conn if self._writable() else None
            if conn is None:
                return
            try:
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT OR REPLACE INTO embeddings (key, dim, vector) VALUES (?, ?, ?)",
                    rows)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                error = write_error(_WHAT, self._path, exc)
                if isinstance(error, StorageFullError):  # stop trying for a while
                    self._read_only = error
                    self._retry_at = time.monotonic() + self._retry_interval
                self._drop(len(rows), error)
                return
            if self._warned:
                log.warning("%s %s stores vectors again", _WHAT, self._path)
                self._warned = False

    def _writable(self) -> bool:
        """True with a read-write connection; while the disk is full, reopen at most every
        ``retry_interval`` seconds (callers hold the lock)."""
        if self._read_only is None:
            return True
        if time.monotonic() < self._retry_at:
            self._drop(0, self._read_only)
            return False
        self._retry_at = time.monotonic() + self._retry_interval
        try:
            conn, read_only = open_sqlite(self._path, _WHAT, _setup)
        except BackendError as exc:
            self._drop(0, exc)
            return False
        if read_only is not None:
            conn.close()
            self._read_only = read_only
            self._drop(0, read_only)
            return False
        if self._conn is not None:
            self._conn.close()
        self._conn, self._read_only = conn, None
        return True

    def _drop(self, n: int, error: BackendError) -> None:
        """Warn once per outage (again only after a successful write)."""
        if not self._warned:
            full = isinstance(error, StorageFullError)
            log.warning("%s; %s", error, "vectors are not cached until then" if full
                        else "those vectors were not cached")
            self._warned = True
        elif n:
            log.debug("dropped %d vectors: %s", n, error)

    def __len__(self) -> int:
        with self._lock:
            if self._conn is None:
                return 0
            return int(self._conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()


class NullEmbeddingCache:
    """``SEMSEARCH_CACHE_URL=none``: every lookup misses."""

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        return {}

    def put_many(self, items: Mapping[str, Vectors]) -> None:
        return None

    def close(self) -> None:
        return None

"""Writes to an embedding cache gathered on a background thread
(SEMSEARCH_CACHE_WRITE_DELAY_MS; off by default).

A server puts the vectors of every request that missed the cache, one small write each:
with SQLite, a transaction per request, each holding the cache's lock against the next
request's lookup (with Redis, a round trip in the request). Gathered here, they cost one
write per ``delay`` instead. Measured with 8 clients on 2 cores and SQLite: no writes at
all served 1.10x the /embed requests, gathering them 0.96-1.08x in three runs - not enough
to turn it on by default; a cache across a network (Redis) saves a round trip per request,
which was not measured (bench/RESULTS.md, "the HTTP path").

- ``put_many`` returns at once; the vectors are pending until the flusher writes them, at
  most ``delay`` seconds later, all pending in one call of the inner cache.
- ``get_many`` answers pending vectors itself, so a read right after a write sees it.
  Pending vectors are read-only copies: a caller changing its array later, or the one it
  was given, changes nothing that is stored.
- At most ``max_pending`` vectors wait: past that, ``put_many`` writes through in the
  caller's thread, so a slow cache slows writers down instead of growing memory.
- A failed write is the inner cache's to report (every backend logs and drops it: the
  cache is an optimisation); the flusher logs anything else and goes on.
- ``close`` writes what is pending, then closes the inner cache. A process killed before
  loses at most ``delay`` seconds of writes: those texts are embedded again when next asked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

import numpy as np

from semsearch.ports import EmbeddingCache, Vectors

log = logging.getLogger("semsearch.cache")


def _frozen(vector: Vectors) -> Vectors:
    arr = np.array(vector, dtype=np.float32)  # always a copy
    arr.flags.writeable = False
    return arr


class WriteBehindCache:
    def __init__(self, inner: EmbeddingCache, delay: float = 0.05,
                 max_pending: int = 10_000) -> None:
        if delay <= 0 or max_pending < 1:
            raise ValueError(f"need delay > 0 and max_pending >= 1, got {delay}, {max_pending}")
        self.inner = inner
        self.delay = delay
        self.max_pending = max_pending
        self._pending: dict[str, Vectors] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closed = False
        self._flusher = threading.Thread(target=self._run, name="semsearch-cache-writer",
                                         daemon=True)
        self._flusher.start()

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        found: dict[str, Vectors] = {}
        with self._lock:
            if self._pending:
                found = {k: v for k in keys if (v := self._pending.get(k)) is not None}
        rest = [k for k in keys if k not in found]
        if rest:
            found.update(self.inner.get_many(rest))
        return found

    def put_many(self, items: Mapping[str, Vectors]) -> None:
        if not items:
            return
        with self._lock:
            if not self._closed and len(self._pending) + len(items) <= self.max_pending:
                self._pending.update({k: _frozen(v) for k, v in items.items()})
                self._wake.notify()
                return
        self.inner.put_many(items)  # closed, or the flusher is behind: write through

    def flush(self) -> None:
        """Write what is pending now, in this thread."""
        with self._lock:
            batch, self._pending = self._pending, {}
        self._write(batch)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._wake.notify()
        self._flusher.join(30)
        self.flush()  # anything the flusher left (it ends after its last write)
        self.inner.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
            # Gather: the requests arriving meanwhile join this write.
            with self._lock:
                self._wake.wait_for(lambda: self._closed, timeout=self.delay)
                batch, self._pending = self._pending, {}
            self._write(batch)

    def _write(self, batch: dict[str, Vectors]) -> None:
        if not batch:
            return
        try:
            self.inner.put_many(batch)
        except Exception:  # never let the flusher die: later writes would pile up
            log.exception("the embedding cache could not store %d vectors; they will be "
                          "embedded again when next asked", len(batch))

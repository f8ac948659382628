"""An in-process LRU in front of any embedding cache.

Repeated texts within a process (boilerplate chunks, re-ingests, repeated queries) are served
from memory without a round trip to SQLite or Redis. ``get_many`` answers what it holds and
asks the inner cache once for the rest, remembering what comes back; ``put_many`` writes to
both. Vectors are held as read-only copies so a caller mutating its array cannot change what
the cache serves. ``max_items=0`` passes every call straight through.

The meter counts this layer only: ``hits`` served from memory, ``misses`` forwarded to the
inner cache (give the inner cache its own meter: overall hits are the sum of both layers'
hits, overall misses are the inner cache's misses)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import numpy as np

from semsearch.core.metering import CacheMeter
from semsearch.ports import EmbeddingCache, Vectors


def _frozen(vector: Vectors) -> Vectors | None:
    """A read-only float32 copy, or None for a vector not worth remembering."""
    arr = np.array(vector, dtype=np.float32)  # always a copy
    if arr.ndim != 1 or arr.shape[0] == 0 or not np.isfinite(arr).all():
        return None
    arr.flags.writeable = False
    return arr


class LruEmbeddingCache:
    def __init__(self, inner: EmbeddingCache, max_items: int = 10000,
                 meter: CacheMeter | None = None) -> None:
        if max_items < 0:
            raise ValueError(f"max_items must be >= 0, got {max_items}")
        self.inner = inner
        self.max_items = max_items
        self.meter = meter if meter is not None else CacheMeter()
        self._items: OrderedDict[str, Vectors] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        unique = list(dict.fromkeys(keys))
        if self.max_items == 0:
            self.meter.add(misses=len(unique))
            return self.inner.get_many(unique) if unique else {}
        found: dict[str, Vectors] = {}
        missing: list[str] = []
        with self._lock:
            for key in unique:
                vec = self._items.get(key)
                if vec is None:
                    missing.append(key)
                else:
                    self._items.move_to_end(key)
                    found[key] = vec
        self.meter.add(hits=len(found), misses=len(missing))
        if missing:
            fetched = self.inner.get_many(missing)  # outside the lock: may be a network call
            remembered = {k: f for k in missing
                          if (v := fetched.get(k)) is not None and (f := _frozen(v)) is not None}
            with self._lock:
                for key, vec in remembered.items():
                    # A put that raced with the inner read wins: never overwrite it.
                    if key not in self._items:
                        self._items[key] = vec
                self._evict()
            found.update(remembered)
        return found

    def put_many(self, items: Mapping[str, Vectors]) -> None:
        if not items:
            return
        self.inner.put_many(items)
        if self.max_items == 0:
            return
        frozen = {k: f for k, v in items.items() if (f := _frozen(v)) is not None}
        with self._lock:
            for key, vec in frozen.items():
                self._items[key] = vec
                self._items.move_to_end(key)
            for key in items.keys() - frozen.keys():  # never serve a stale value for a
                self._items.pop(key, None)  # key just overwritten with a rejected one
            self._evict()

    def _evict(self) -> None:
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def clear(self) -> None:
        """Forget what is held in memory (the inner cache is untouched)."""
        with self._lock:
            self._items.clear()

    def close(self) -> None:
        self.clear()
        self.inner.close()

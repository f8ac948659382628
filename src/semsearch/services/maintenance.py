"""Rebuilding derived indexes from the canonical store.

The vector and keyword indexes are derived data: deleting their files loses nothing, and
``rebuild`` recreates them from the stored chunks, with vectors from the embedding cache
(misses are re-embedded), so searches answer exactly as before."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from semsearch.runtime.engine import Engine
from semsearch.runtime.naming import version_of


@dataclass(frozen=True)
class RebuildReport:
    collection: str
    chunks: int
    embedded: int
    cache_hits: int
    seconds: float


def chunk_count(engine: Engine, collection: str) -> int:
    """Chunks of the version a name points at (a rebuild's progress total)."""
    return engine.collection(collection).info.chunks


def rebuild_indexes(engine: Engine, collection: str,
                    on_progress: Callable[[int], None] | None = None) -> RebuildReport:
    started = time.perf_counter()
    handle = engine.collection(collection)
    embedder = handle.embedder
    # Start from nothing on disk, so a corrupt file cannot survive a rebuild.
    engine.drop_indexes(handle.version)
    idx = engine.indexes(handle.info)
    with idx.rw.write():
        info = handle.reload()
        stats = idx.rebuild(engine.store, embedder, info.generation, on_progress)
    base, _ = version_of(handle.version)
    if engine.resolve(base) == handle.version:  # re-created: its mirrored name with it
        engine.index_storage.point(base, handle.version)
    return RebuildReport(collection=handle.version, chunks=info.chunks, embedded=stats.embedded,
                         cache_hits=stats.cache_hits,
                         seconds=round(time.perf_counter() - started, 3))

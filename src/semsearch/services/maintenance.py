"""Rebuilding derived indexes from the canonical store.

The vector and keyword indexes are derived data: deleting their files loses nothing, and
``rebuild`` recreates them from the stored chunks, with vectors from the embedding cache
(misses are re-embedded), so searches answer exactly as before."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass

from semsearch.wiring import Engine


@dataclass(frozen=True)
class RebuildReport:
    collection: str
    chunks: int
    embedded: int
    cache_hits: int
    seconds: float


def rebuild_indexes(engine: Engine, collection: str,
                    on_progress: Callable[[int], None] | None = None) -> RebuildReport:
    started = time.perf_counter()
    collection = engine.resolve(collection)
    info = engine.store.get_collection(collection)
    embedder = engine.embedder_for(info)
    # Start from nothing on disk, so a corrupt file cannot survive a rebuild.
    engine.forget_indexes(collection)
    shutil.rmtree(engine.settings.index_dir(collection), ignore_errors=True)
    idx = engine.indexes(collection)
    with idx.rw.write():
        info = engine.store.get_collection(collection)
        stats = idx.rebuild(engine.store, embedder, info.generation, on_progress)
    return RebuildReport(collection=collection, chunks=info.chunks, embedded=stats.embedded,
                         cache_hits=stats.cache_hits,
                         seconds=round(time.perf_counter() - started, 3))

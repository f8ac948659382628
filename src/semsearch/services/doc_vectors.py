"""Vectors of documents and of chunks, for the use cases that compare documents with each
other (similar items, near-duplicates, recommendations, MMR, vector arithmetic).

A document's vector is the renormalized mean of its chunks' vectors
(``runtime.indexes.doc_vector``). The writer computes it when it embeds the document and the
store keeps it beside the document, in the same transaction (``DocumentStore.doc_vectors``),
so reading it costs one store query: no model call, and no dependence on the embedding
cache still holding every chunk (a Redis cache with eviction in front of a paid API would
otherwise re-embed, and bill, a whole collection for one deduplication). Chunk vectors are
not stored; they come back through the collection's embedding cache."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence

import numpy as np

from semsearch.core.types import InputType
from semsearch.ports import StoredChunk, Vectors
from semsearch.runtime.collection import Collection
from semsearch.runtime.engine import Engine

PAGE = 1000  # documents per store read when walking a whole collection


def _unit(v: Vectors) -> Vectors | None:
    """``v`` normalized, or None when it is unusable (wrong values from a damaged row)."""
    if not np.all(np.isfinite(v)):
        return None
    norm = float(np.linalg.norm(v))
    if norm < 1e-12:
        return None
    out: Vectors = (v / norm).astype(np.float32)
    return out


def document_vectors(engine: Engine, handle: Collection,
                     doc_ids: Sequence[str]) -> dict[str, Vectors]:
    """Unit vectors of the documents that exist, by id; unknown ids are left out (the
    caller says which ones it was missing)."""
    if not doc_ids:
        return {}
    dim = handle.info.identity.dimension
    out: dict[str, Vectors] = {}
    for doc_id, v in engine.store.doc_vectors(handle.version, list(doc_ids)).items():
        unit = _unit(v) if v.shape == (dim,) else None
        if unit is not None:
            out[doc_id] = unit
    return out


def chunk_vectors(engine: Engine, handle: Collection,
                  stored_chunks: Sequence[StoredChunk]) -> Vectors:
    """The chunks' vectors, in order, through the collection's embedding cache (hits: the
    writer embedded these texts with this identity)."""
    if not stored_chunks:
        return np.zeros((0, handle.info.identity.dimension), dtype=np.float32)
    return handle.embedder.embed([s.chunk.embed_text for s in stored_chunks],
                                 InputType.PASSAGE)


def iter_document_vectors(engine: Engine, handle: Collection,
                          page: int = PAGE) -> Iterator[tuple[list[str], Vectors]]:
    """Every document of the collection as pages of (ids, unit vectors as rows), in id
    order: what deduplication and the centroid walk."""
    ids = engine.store.all_doc_ids(handle.version)
    dim = handle.info.identity.dimension
    for start in range(0, len(ids), page):
        part = ids[start:start + page]
        found = document_vectors(engine, handle, part)
        kept = [i for i in part if i in found]  # deleted since the id list was read
        if kept:
            yield kept, np.stack([found[i] for i in kept])
        else:
            yield [], np.zeros((0, dim), dtype=np.float32)


# -- the collection's centroid, once per collection generation -------------------------
_centroids: dict[int, tuple[weakref.ref[Engine], dict[str, tuple[int, Vectors, int]]]] = {}
_centroids_lock = threading.Lock()


def centroid(engine: Engine, handle: Collection) -> tuple[Vectors | None, int]:
    """The unit mean of every document vector (None for an empty collection) and how many
    documents it averages. Kept per engine and collection version, recomputed when the
    store's generation moves (any write), so it costs one pass over the collection per
    change, not per request."""
    generation = handle.info.generation
    with _centroids_lock:
        entry = _centroids.get(id(engine))
        if entry is not None and entry[0]() is not engine:  # a dead engine's id, reused
            entry = None
        cached = entry[1].get(handle.version) if entry is not None else None
    if cached is not None and cached[0] == generation:
        return (cached[1] if cached[2] else None), cached[2]
    total = np.zeros(handle.info.identity.dimension, dtype=np.float64)
    count = 0
    for ids, vecs in iter_document_vectors(engine, handle):
        total += vecs.sum(axis=0, dtype=np.float64)
        count += len(ids)
    unit = _unit(total.astype(np.float32)) if count else None
    stored = unit if unit is not None else np.zeros_like(total, dtype=np.float32)
    with _centroids_lock:
        for key in [k for k, (ref, _) in _centroids.items() if ref() is None]:
            del _centroids[key]
        entry = _centroids.get(id(engine))
        if entry is None or entry[0]() is not engine:
            entry = _centroids[id(engine)] = (weakref.ref(engine), {})
        entry[1][handle.version] = (generation, stored, count if unit is not None else 0)
    return unit, (count if unit is not None else 0)

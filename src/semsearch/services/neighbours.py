"""Symmetric search: the documents nearest a vector, and the documents similar to one.

The vector index holds chunks, so its labels are grouped by document (a document's best
chunk stands for it, as in ``services.search``) and fetched deeper until ``k`` documents
outside the excluded ones are found. A filter restricts the index to the matching
documents' chunks before ranking, as a search's does."""

from __future__ import annotations

import time
from collections.abc import Collection as Set
from dataclasses import dataclass, field

from semsearch.core.filters import Filter
from semsearch.core.types import ComponentScore, Hit
from semsearch.errors import InputError, NotFoundError
from semsearch.ports import Vectors
from semsearch.runtime.collection import Collection
from semsearch.runtime.engine import Engine
from semsearch.services.doc_vectors import document_vectors

MAX_K = 1000
MAX_FETCH = 16_384  # chunk candidates at most (Milvus's top-k limit), however many are excluded


@dataclass
class Neighbours:
    hits: list[Hit]
    timings: dict[str, float] = field(default_factory=dict)
    version: str = ""  # the collection version that answered


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}")


def nearest_documents(engine: Engine, handle: Collection, vector: Vectors, k: int,
                      exclude: Set[str] = frozenset(),
                      filt: Filter | None = None) -> list[Hit]:
    """The ``k`` documents whose best chunk is nearest ``vector`` (unit), best first,
    leaving out ``exclude``. Each hit carries that chunk, scored by its cosine."""
    store, version = engine.store, handle.version
    idx = handle.indexes()
    where = filt if filt and idx.vectors.filters else None
    allowed: set[int] | None = None
    if filt and where is None:
        allowed = store.labels_matching(version, filt)
        if not allowed:
            return []
    n = max(2 * (k + len(exclude)), engine.settings.candidates, 10)
    with idx.rw.read():  # a concurrent batch write is seen whole or not at all
        while True:
            n = min(n, MAX_FETCH)
            ranked = idx.vectors.search(vector, n, where=where) if where is not None \
                else idx.vectors.search(vector, n, allowed)
            doc_of = store.doc_ids_by_label(version, [label for label, _ in ranked])
            best: dict[str, tuple[int, float]] = {}
            for label, score in ranked:
                doc = doc_of.get(label)  # gone under a concurrent delete: skip it
                if doc is not None and doc not in exclude and doc not in best:
                    best[doc] = (label, score)
            if len(best) >= k or len(ranked) < n or n >= MAX_FETCH:
                break
            n *= 4  # many chunks per document, or many excluded: look deeper
    top = list(best.items())[:k]
    stored = store.chunks_by_label(version, [label for _, (label, _) in top])
    hits: list[Hit] = []
    for doc, (label, score) in top:
        sc = stored.get(label)
        if sc is None:
            continue
        hits.append(Hit(doc_id=doc, chunk_id=sc.chunk.id, score=float(score),
                        components={"dense": ComponentScore(len(hits) + 1, float(score))},
                        text=sc.chunk.text, title=sc.chunk.title, metadata=sc.metadata,
                        ordinal=sc.chunk.ordinal, start=sc.chunk.start, end=sc.chunk.end))
    return hits


def similar(engine: Engine, collection: str, doc_id: str, k: int = 10,
            filt: Filter | None = None) -> Neighbours:
    """The ``k`` documents nearest a document's vector, itself left out. Its near-copies
    come first; a score is the cosine between that vector and the hit's best chunk."""
    check_k(k)
    started = time.perf_counter()
    handle = engine.collection(collection)  # no model call: the vectors are stored
    vec = document_vectors(engine, handle, [doc_id]).get(doc_id)
    if vec is None:
        raise NotFoundError(f"no document {doc_id!r} in collection {collection!r}")
    hits = nearest_documents(engine, handle, vec, k, {doc_id}, filt)
    return Neighbours(hits, {"total": time.perf_counter() - started}, handle.version)

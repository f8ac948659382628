"""Dense, keyword and hybrid search over one collection.

Each retriever returns chunk candidates; unless chunks are asked for, each list is first
grouped by document (a document's best chunk stands for it) and the lists are then fused, so
a document with two matching chunks is not counted twice by RRF. A filter restricts every
retriever to the chunks whose document metadata matches, before ranking, so k matches come
back whenever k exist."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from semsearch.core.filters import Filter
from semsearch.core.fusion import FUSIONS, fuse
from semsearch.core.types import ComponentScore, Hit, InputType, Mode
from semsearch.core.unicode import require_unicode
from semsearch.errors import InputError
from semsearch.ports import Attributes, Vectors
from semsearch.runtime.collection import Collection
from semsearch.runtime.embedding import CachedEmbedder, EmbedStats
from semsearch.runtime.engine import Engine
from semsearch.runtime.indexes import CollectionIndexes

MAX_K = 1000


@dataclass(frozen=True)
class SearchRequest:
    query: str
    mode: Mode = Mode.HYBRID
    k: int = 10
    filter: Filter = field(default_factory=Filter)
    fusion: str = "rrf"
    weights: Mapping[str, float] | None = None
    rrf_k: int | None = None
    candidates: int | None = None
    group: bool = True

    def validate(self) -> None:
        if not self.query or not self.query.strip():
            raise InputError("the query is empty")
        require_unicode(self.query, "the query")
        if not 1 <= self.k <= MAX_K:
            raise InputError(f"k must be between 1 and {MAX_K}, got {self.k}")
        if self.fusion not in FUSIONS:
            raise InputError(f"unknown fusion {self.fusion!r}; use one of {', '.join(FUSIONS)}")


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float]
    version: str = ""  # the collection version that answered (names are aliases)


Ranked = list[tuple[int, float]]


def _group(ranked: Ranked, doc_of: Mapping[int, str]) -> list[tuple[str, float, int]]:
    seen: set[str] = set()
    out: list[tuple[str, float, int]] = []
    for label, score in ranked:
        doc = doc_of[label]
        if doc not in seen:
            seen.add(doc)
            out.append((doc, score, label))
    return out


@dataclass(frozen=True)
class Allowed:
    """What a filter allows: the store's labels (None: everything), and the filter itself
    for a vector index that evaluates it (then the dense side ignores ``labels``)."""

    labels: set[int] | None
    where: Filter | None = None


def _retrieve(engine: Engine, idx: CollectionIndexes, req: SearchRequest, qv: Vectors | None,
              n: int, allowed: Allowed, timings: dict[str, float],
              attrs: Attributes) -> dict[str, Ranked]:
    """Hybrid runs the keyword side on a worker thread while the dense side searches; both
    numpy and SQLite release the GIL, so the two halves overlap instead of adding."""
    tel = engine.telemetry

    def keyword() -> Ranked:
        t = time.perf_counter()
        with tel.span("semsearch.keyword", attrs):
            found = idx.keyword.search(req.query, n, allowed.labels)
        timings["keyword"] = time.perf_counter() - t
        return found

    def dense() -> Ranked:
        assert qv is not None
        t = time.perf_counter()
        with tel.span("semsearch.dense", attrs):
            if allowed.where is not None:
                found = idx.vectors.search(qv, n, where=allowed.where)
            else:
                found = idx.vectors.search(qv, n, allowed.labels)
        timings["dense"] = time.perf_counter() - t
        return found

    if req.mode == Mode.KEYWORD:
        return {"keyword": keyword()}
    if req.mode == Mode.DENSE:
        return {"dense": dense()}
    # The worker runs in a copy of this context, so its span is a child of this search's.
    pending = engine.executor().submit(contextvars.copy_context().run, keyword)
    dense_hits = dense()
    return {"dense": dense_hits, "keyword": pending.result()}


def search(engine: Engine, collection: str | Collection, req: SearchRequest) -> SearchResult:
    """Search a collection by name, or through a handle already open (an evaluation runs
    hundreds of queries against one)."""
    req.validate()
    started = time.perf_counter()
    tel = engine.telemetry
    name = collection.name if isinstance(collection, Collection) else collection
    attrs: dict[str, str | int | float | bool] = {
        "semsearch.collection": name, "semsearch.mode": req.mode.value}
    with tel.span("semsearch.search", attrs) as span:
        with tel.span("semsearch.store", {**attrs, "semsearch.op": "open_collection"}) as op:
            handle = collection if isinstance(collection, Collection) \
                else engine.collection(collection)
            embedder = handle.embedder  # another model's collection is refused in every mode
            attrs["semsearch.model"] = embedder.identity.model
            attrs["semsearch.version"] = handle.version
            op.set(attrs)
            idx = handle.indexes()
        span.set(attrs)
        result = _search(engine, handle.version, idx, embedder, req, started, attrs)
        span.set({"semsearch.hits": len(result.hits)})
    return result


def _search(engine: Engine, version: str, idx: CollectionIndexes, embedder: CachedEmbedder,
            req: SearchRequest, started: float, attrs: Attributes) -> SearchResult:
    tel = engine.telemetry
    timings: dict[str, float] = {}
    allowed: set[int] | None = None
    # A vector index that keeps metadata (Milvus) evaluates the filter itself; the store
    # finds the allowed labels only for what else needs them (the keyword side).
    where = req.filter if req.filter and idx.vectors.filters else None
    if req.filter and not (where is not None and req.mode == Mode.DENSE):
        with tel.span("semsearch.store", {**attrs, "semsearch.op": "labels_matching"}):
            allowed = engine.store.labels_matching(version, req.filter)
        if not allowed:
            return SearchResult([], {"total": time.perf_counter() - started}, version)
    qv = None
    if req.mode != Mode.KEYWORD:  # embed outside the lock: it is the slow part
        t = time.perf_counter()
        with tel.span("semsearch.embed", attrs):
            qv = embedder.embed([req.query], InputType.QUERY)[0]
        timings["embed"] = time.perf_counter() - t
    with idx.rw.read():  # a concurrent batch upsert is seen whole or not at all
        return _search_locked(engine, version, idx, req, qv, Allowed(allowed, where), timings,
                              started, attrs)


def _search_locked(engine: Engine, version: str, idx: CollectionIndexes,
                   req: SearchRequest, qv: Vectors | None, allowed: Allowed,
                   timings: dict[str, float], started: float,
                   attrs: Attributes) -> SearchResult:
    tel = engine.telemetry
    n = max(req.candidates or engine.settings.candidates, req.k)
    rrf_k = req.rrf_k or engine.settings.rrf_k
    while True:
        lists = _retrieve(engine, idx, req, qv, n, allowed, timings, attrs)
        with tel.span("semsearch.store", {**attrs, "semsearch.op": "doc_ids_by_label"}):
            doc_of = engine.store.doc_ids_by_label(
                version, list({label for ranked in lists.values() for label, _ in ranked}))
        # A label can vanish between retrieval and lookup under a concurrent delete.
        lists = {name: [(lb, s) for lb, s in ranked if lb in doc_of]
                 for name, ranked in lists.items()}
        if not req.group:
            break
        exhausted = all(len(ranked) < n for ranked in lists.values())
        enough = all(len(_group(ranked, doc_of)) >= req.k for ranked in lists.values())
        if exhausted or enough or n >= 8 * MAX_K:
            break
        n *= 4  # many chunks per document: fetch deeper until k documents are covered
    t = time.perf_counter()
    with tel.span("semsearch.fusion", attrs):
        fused = _fuse(lists, doc_of, req, rrf_k)
    timings["fusion"] = time.perf_counter() - t
    with tel.span("semsearch.store", {**attrs, "semsearch.op": "chunks_by_label"}):
        stored = engine.store.chunks_by_label(version, [label for label, _, _ in fused])
    hits = [Hit(doc_id=sc.chunk.doc_id, chunk_id=sc.chunk.id, score=score, components=comps,
                text=sc.chunk.text, title=sc.chunk.title, metadata=sc.metadata,
                ordinal=sc.chunk.ordinal, start=sc.chunk.start, end=sc.chunk.end)
            for label, score, comps in fused if (sc := stored.get(label)) is not None]
    timings["total"] = time.perf_counter() - started
    return SearchResult(hits, timings, version)


def _fuse(lists: dict[str, Ranked], doc_of: Mapping[int, str], req: SearchRequest,
          rrf_k: int) -> list[tuple[int, float, dict[str, ComponentScore]]]:
    """Top k as (chunk label, fused score, components)."""
    keyed: dict[str, list[tuple[str, float]]]
    best_label: dict[tuple[str, str], int] = {}
    if req.group:
        keyed = {}
        for name, ranked in lists.items():
            grouped = _group(ranked, doc_of)
            keyed[name] = [(doc, score) for doc, score, _ in grouped]
            for doc, _, label in grouped:
                best_label[(name, doc)] = label
    else:
        keyed = {name: [(str(label), s) for label, s in ranked] for name, ranked in lists.items()}
    fused: list[tuple[str, float, dict[str, ComponentScore]]]
    if len(keyed) == 1:
        ((only, single),) = keyed.items()
        fused = [(key, score, {only: ComponentScore(r, score)})
                 for r, (key, score) in enumerate(single, start=1)]
    else:
        fused = [(str(f.key), f.score, dict(f.components))
                 for f in fuse(keyed, req.fusion, rrf_k=rrf_k, weights=req.weights)]
    out: list[tuple[int, float, dict[str, ComponentScore]]] = []
    for key, score, comps in fused[: req.k]:
        if req.group:
            # The document's chunk from the component that ranks it best.
            name = min(comps, key=lambda c: (comps[c].rank, c != "dense"))
            label = best_label[(name, key)]
        else:
            label = int(key)
        out.append((label, float(score), comps))
    return out


def embed_texts(engine: Engine, texts: Sequence[str],
                input_type: InputType = InputType.PASSAGE,
                stats: EmbedStats | None = None) -> Vectors:
    """Vectors of the configured embedder, through the cache (``/embed``, ``semsearch
    embed`` and the OpenAI-compatible endpoint)."""
    for i, t in enumerate(texts):
        if not t or not t.strip():
            raise InputError(f"text #{i} is empty; nothing to embed")
        require_unicode(t, f"text #{i}")
    return engine.embedder.embed(list(texts), input_type, stats)

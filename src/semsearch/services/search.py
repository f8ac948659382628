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
from dataclasses import dataclass, field, replace

import numpy as np

from semsearch.core.filters import Filter
from semsearch.core.fusion import FUSIONS, fuse
from semsearch.core.mmr import mmr_order
from semsearch.core.types import ComponentScore, Hit, InputType, Mode
from semsearch.core.unicode import require_unicode
from semsearch.errors import InputError, NotFoundError
from semsearch.ports import Attributes, StoredChunk, Vectors
from semsearch.runtime.collection import Collection
from semsearch.runtime.embedding import CachedEmbedder, EmbedStats
from semsearch.runtime.engine import Engine
from semsearch.runtime.indexes import CollectionIndexes

MAX_K = 1000


MAX_TERMS = 64  # texts and ids in one vector-arithmetic query


@dataclass(frozen=True)
class SearchRequest:
    """One search. Options left None take the collection's tuned defaults (``semsearch
    tune``), else the settings'.

    ``plus``/``minus`` (texts) and ``plus_ids``/``minus_ids`` (documents) make the query a
    vector sum, searched densely: the query text, when given, is one more positive term.
    ``mmr`` re-orders for diversity (lambda: 1 relevance only, 0 novelty only); ``rerank``
    re-scores the top N with the configured re-ranker (0: off)."""

    query: str = ""
    mode: Mode = Mode.HYBRID
    k: int = 10
    filter: Filter = field(default_factory=Filter)
    fusion: str | None = None
    weights: Mapping[str, float] | None = None
    rrf_k: int | None = None
    candidates: int | None = None
    group: bool = True
    title_weight: float | None = None
    mmr: float | None = None
    rerank: int | None = None
    plus: tuple[str, ...] = ()
    minus: tuple[str, ...] = ()
    plus_ids: tuple[str, ...] = ()
    minus_ids: tuple[str, ...] = ()

    @property
    def arithmetic(self) -> bool:
        return bool(self.plus or self.minus or self.plus_ids or self.minus_ids)

    def validate(self) -> None:
        if self.arithmetic:
            self._validate_terms()
        elif not self.query or not self.query.strip():
            raise InputError("the query is empty")
        if self.query:
            require_unicode(self.query, "the query")
        if not 1 <= self.k <= MAX_K:
            raise InputError(f"k must be between 1 and {MAX_K}, got {self.k}")
        if self.fusion is not None and self.fusion not in FUSIONS:
            raise InputError(f"unknown fusion {self.fusion!r}; use one of {', '.join(FUSIONS)}")
        if self.mmr is not None and not (0.0 <= self.mmr <= 1.0):  # NaN fails too
            raise InputError(f"mmr (lambda) must be between 0 and 1, got {self.mmr}")
        if self.rerank is not None and not 0 <= self.rerank <= MAX_K:
            raise InputError(f"rerank must be between 0 and {MAX_K}, got {self.rerank}")
        if self.title_weight is not None and not (0.0 < self.title_weight <= 100.0):
            raise InputError(f"title_weight must be above 0 and at most 100, "
                             f"got {self.title_weight}")

    def _validate_terms(self) -> None:
        if self.mode == Mode.KEYWORD:
            raise InputError("vector arithmetic (plus/minus) searches the dense index; "
                             "use mode dense or hybrid, not keyword")
        terms = (*self.plus, *self.minus, *self.plus_ids, *self.minus_ids)
        if len(terms) > MAX_TERMS:
            raise InputError(f"at most {MAX_TERMS} plus/minus terms, got {len(terms)}")
        for what, items in (("plus", self.plus), ("minus", self.minus),
                            ("plus id", self.plus_ids), ("minus id", self.minus_ids)):
            for i, t in enumerate(items):
                if not t or not t.strip():
                    raise InputError(f"{what} #{i + 1} is empty")
                require_unicode(t, f"{what} #{i + 1}")
        if self.rerank and not self.query.strip():
            raise InputError("rerank re-scores against the query text; give a query "
                             "with the plus/minus terms, or leave rerank out")
        if not (self.plus or self.plus_ids or (self.query and self.query.strip())):
            raise InputError("vector arithmetic needs at least one positive term "
                             "(a query, plus text or plus id)")


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
            found = idx.keyword.search(req.query, n, allowed.labels,
                                       title_weight=req.title_weight)
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
        result = _search(engine, handle, idx, embedder, _resolved(engine, handle, req),
                         started, attrs)
        span.set({"semsearch.hits": len(result.hits)})
    return result


def _resolved(engine: Engine, handle: Collection, req: SearchRequest) -> SearchRequest:
    """The request with what it left unset taken from the collection's defaults."""
    from semsearch.services.tune import search_defaults  # tune imports this module

    d = search_defaults(engine, handle)
    rerank = req.rerank if req.rerank is not None else engine.settings.rerank_top
    if req.arithmetic and not req.query.strip() and req.rerank is None:
        rerank = 0  # the configured default re-ranks query texts; a pure sum has none
    return replace(
        req, mode=Mode.DENSE if req.arithmetic else req.mode,
        fusion=req.fusion or d.fusion, rrf_k=req.rrf_k or d.rrf_k,
        candidates=req.candidates or d.candidates,
        weights=req.weights if req.weights is not None else d.weights,
        title_weight=req.title_weight if req.title_weight is not None else d.title_weight,
        rerank=rerank)


@dataclass
class _Found:
    """A hit with the stored chunk it came from (its embedded text, for MMR)."""

    hit: Hit
    chunk: StoredChunk


def _search(engine: Engine, handle: Collection, idx: CollectionIndexes,
            embedder: CachedEmbedder, req: SearchRequest, started: float,
            attrs: Attributes) -> SearchResult:
    tel = engine.telemetry
    version = handle.version
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
    excluded = _Excluded()
    # Embed outside the lock: it is the slow part. MMR needs the query vector in every mode:
    # its relevance and its redundancy must be on one scale (cosines).
    if req.mode != Mode.KEYWORD or req.mmr is not None:
        t = time.perf_counter()
        with tel.span("semsearch.embed", attrs):
            if req.arithmetic:
                qv, excluded = _arithmetic(engine, handle, req)
            else:
                qv = embedder.embed([req.query], InputType.QUERY)[0]
        timings["embed"] = time.perf_counter() - t
    pool = _pool(req) + len(excluded)
    with idx.rw.read():  # a concurrent batch upsert is seen whole or not at all
        found = _search_locked(engine, version, idx, req, qv if req.mode != Mode.KEYWORD
                               else None, Allowed(allowed, where), timings, attrs, pool)
    if excluded:
        found = [f for f in found if not excluded.covers(f.hit)]
    hits = [f.hit for f in found]
    if req.rerank:
        from semsearch.services.rerank import rerank_hits  # the stage is optional

        t = time.perf_counter()
        with tel.span("semsearch.rerank", attrs):
            hits = rerank_hits(engine, req.query, hits, req.rerank)
        timings["rerank"] = time.perf_counter() - t
    if req.mmr is not None and len(hits) > 1:
        assert qv is not None
        t = time.perf_counter()
        hits = _diversify(embedder, found, hits, qv, req.k, req.mmr)
        timings["mmr"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    return SearchResult(hits[: req.k], timings, version)


def _pool(req: SearchRequest) -> int:
    """How many fused results the stages after fusion choose from."""
    pool = req.k
    if req.rerank:
        pool = max(pool, req.rerank)
    if req.mmr is not None:  # room to swap a near-duplicate for something new
        pool = max(pool, min(MAX_K, max(4 * req.k, 40)))
    return pool


@dataclass
class _Excluded:
    """The documents a vector-arithmetic query names: given by id, or whose title or text is
    one of its terms (king - man + woman should not answer 'king')."""

    ids: frozenset[str] = frozenset()
    texts: frozenset[str] = frozenset()

    def __len__(self) -> int:
        return len(self.ids) + len(self.texts)

    def covers(self, hit: Hit) -> bool:
        return hit.doc_id in self.ids or _term(hit.text) in self.texts \
            or (bool(hit.title) and _term(hit.title) in self.texts)


def _term(text: str) -> str:
    return " ".join(text.split()).casefold()


def _arithmetic(engine: Engine, handle: Collection,
                req: SearchRequest) -> tuple[Vectors, _Excluded]:
    """The normalized sum of the positive terms minus the negative ones, each a unit vector:
    texts embedded as queries, documents by their document vector."""
    plus_texts = [*([req.query] if req.query.strip() else []), *req.plus]
    texts = plus_texts + list(req.minus)
    vecs = handle.embedder.embed(texts, InputType.QUERY) if texts else None
    ids = list(dict.fromkeys((*req.plus_ids, *req.minus_ids)))
    docs: dict[str, Vectors] = {}
    if ids:
        from semsearch.services.doc_vectors import document_vectors

        docs = document_vectors(engine, handle, ids)
    missing = [i for i in ids if i not in docs]
    if missing:
        raise NotFoundError(f"no document {', '.join(map(repr, missing[:5]))} in collection "
                            f"{handle.name!r}")
    total = np.zeros(handle.embedder.identity.dimension, dtype=np.float64)
    for i in range(len(texts)):
        assert vecs is not None
        v = vecs[i] / max(float(np.linalg.norm(vecs[i])), 1e-12)
        total += v if i < len(plus_texts) else -v
    for doc in req.plus_ids:
        total += docs[doc]
    for doc in req.minus_ids:
        total -= docs[doc]
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise InputError("the plus and minus terms cancel out: their sum is the zero vector")
    qv: Vectors = (total / norm).astype(np.float32)
    return qv, _Excluded(frozenset(ids), frozenset(_term(t) for t in texts))


def _diversify(embedder: CachedEmbedder, found: list[_Found], hits: list[Hit],
               qv: Vectors, k: int, lam: float) -> list[Hit]:
    """MMR over the hits, with the chunks' own vectors from the embedding cache.

    Relevance is the order the search produced (fused, re-ranked), not the dense cosine
    alone, so lambda 1 keeps that order exactly; it is expressed on the cosine scale (the
    i-th hit gets the i-th largest cosine to the query in the pool), so that it weighs
    against redundancy, a cosine too, on equal terms."""
    chunk_of = {f.hit.chunk_id: f.chunk for f in found}
    hits = [h for h in hits if h.chunk_id in chunk_of]
    vecs = embedder.embed([chunk_of[h.chunk_id].chunk.embed_text for h in hits],
                          InputType.PASSAGE)
    vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
    relevance = np.sort(vecs @ qv)[::-1].astype(np.float32)
    picks = mmr_order(relevance, vecs.astype(np.float32), k, lam)
    return [replace(hits[i], components={**hits[i].components, "mmr": ComponentScore(r, m)})
            for r, (i, m) in enumerate(picks, start=1)]


def _search_locked(engine: Engine, version: str, idx: CollectionIndexes,
                   req: SearchRequest, qv: Vectors | None, allowed: Allowed,
                   timings: dict[str, float], attrs: Attributes, pool: int) -> list[_Found]:
    tel = engine.telemetry
    n = max(req.candidates or engine.settings.candidates, pool)
    rrf_k = req.rrf_k or engine.settings.rrf_k
    while True:
        lists = _retrieve(engine, idx, req, qv, n, allowed, timings, attrs)
        with tel.span("semsearch.store", {**attrs, "semsearch.op": "doc_ids_by_label"}):
            doc_of = _doc_ids(engine, version, lists, req, pool)
        # A label can vanish between retrieval and lookup under a concurrent delete.
        lists = {name: [(lb, s) for lb, s in ranked if lb in doc_of]
                 for name, ranked in lists.items()}
        if not req.group:
            break
        exhausted = all(len(ranked) < n for ranked in lists.values())
        enough = all(len(_group(ranked, doc_of)) >= pool for ranked in lists.values())
        if exhausted or enough or n >= 8 * MAX_K:
            break
        n *= 4  # many chunks per document: fetch deeper until k documents are covered
    t = time.perf_counter()
    with tel.span("semsearch.fusion", attrs):
        fused = _fuse(lists, doc_of, req, rrf_k, pool)
    timings["fusion"] = time.perf_counter() - t
    with tel.span("semsearch.store", {**attrs, "semsearch.op": "chunks_by_label"}):
        stored = engine.store.chunks_by_label(version, [label for label, _, _ in fused])
    return [_Found(Hit(doc_id=sc.chunk.doc_id, chunk_id=sc.chunk.id, score=score,
                       components=comps, text=sc.chunk.text, title=sc.chunk.title,
                       metadata=sc.metadata, ordinal=sc.chunk.ordinal, start=sc.chunk.start,
                       end=sc.chunk.end), sc)
            for label, score, comps in fused if (sc := stored.get(label)) is not None]


def _doc_ids(engine: Engine, version: str, lists: dict[str, Ranked], req: SearchRequest,
             pool: int) -> dict[int, str]:
    """The documents of the candidates that can matter. One list (keyword or dense mode),
    grouped, needs only a head holding ``pool`` documents: the head's grouping is the
    whole list's, up to there. So look the head up first (it usually holds them: chunks of
    one document are few) and cut the list to it, instead of looking up every candidate
    (a keyword search fetches 100 to answer 10); else look them all up."""
    if req.group and len(lists) == 1:
        ((name, ranked),) = lists.items()
        head = ranked[: 2 * pool]
        if len(head) < len(ranked):
            doc_of = engine.store.doc_ids_by_label(version, [lb for lb, _ in head])
            if len({doc_of[lb] for lb, _ in head if lb in doc_of}) >= pool:
                lists[name] = head  # the rest cannot reach the first ``pool`` documents
                return doc_of
    return engine.store.doc_ids_by_label(
        version, list({label for ranked in lists.values() for label, _ in ranked}))


def _fuse(lists: dict[str, Ranked], doc_of: Mapping[int, str], req: SearchRequest,
          rrf_k: int, top: int) -> list[tuple[int, float, dict[str, ComponentScore]]]:
    """The ``top`` first as (chunk label, fused score, components)."""
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
                 for f in fuse(keyed, req.fusion or "rrf", rrf_k=rrf_k, weights=req.weights)]
    out: list[tuple[int, float, dict[str, ComponentScore]]] = []
    for key, score, comps in fused[:top]:
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

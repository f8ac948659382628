"""Dense, keyword and hybrid search over one collection.

Each retriever returns chunk candidates; unless chunks are asked for, each list is first
grouped by document (a document's best chunk stands for it) and the lists are then fused, so
a document with two matching chunks is not counted twice by RRF. A filter restricts every
retriever to the chunks whose document metadata matches, before ranking, so k matches come
back whenever k exist."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from semsearch.core.filters import Filter
from semsearch.core.fusion import FUSIONS, fuse
from semsearch.core.types import ComponentScore, Hit, InputType, Mode
from semsearch.errors import InputError
from semsearch.ports import StoredChunk
from semsearch.services.indexes import CollectionIndexes
from semsearch.wiring import Engine

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
        if not 1 <= self.k <= MAX_K:
            raise InputError(f"k must be between 1 and {MAX_K}, got {self.k}")
        if self.fusion not in FUSIONS:
            raise InputError(f"unknown fusion {self.fusion!r}; use one of {', '.join(FUSIONS)}")


@dataclass
class SearchResult:
    hits: list[Hit]
    timings: dict[str, float]


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


def _retrieve(engine: Engine, idx: CollectionIndexes, req: SearchRequest, n: int,
              allowed: set[int] | None, timings: dict[str, float]) -> dict[str, Ranked]:
    lists: dict[str, Ranked] = {}
    if req.mode in (Mode.DENSE, Mode.HYBRID):
        t = time.perf_counter()
        qv = engine.embedder.embed([req.query], InputType.QUERY)[0]
        timings["embed"] = time.perf_counter() - t
        t = time.perf_counter()
        with idx.lock:
            lists["dense"] = idx.vectors.search(qv, n, allowed)
        timings["dense"] = time.perf_counter() - t
    if req.mode in (Mode.KEYWORD, Mode.HYBRID):
        t = time.perf_counter()
        with idx.lock:
            lists["keyword"] = idx.keyword.search(req.query, n, allowed)
        timings["keyword"] = time.perf_counter() - t
    return lists


def search(engine: Engine, collection: str, req: SearchRequest) -> SearchResult:
    req.validate()
    started = time.perf_counter()
    info = engine.store.get_collection(collection)
    engine.check_identity(info)
    idx = engine.fresh_indexes(collection)
    timings: dict[str, float] = {}
    allowed: set[int] | None = None
    if req.filter:
        allowed = engine.store.labels_matching(collection, req.filter)
        if not allowed:
            return SearchResult([], {"total": time.perf_counter() - started})
    base = req.candidates or engine.settings.candidates
    n = max(base, req.k) if req.mode == Mode.HYBRID else req.k
    rrf_k = req.rrf_k or engine.settings.rrf_k
    while True:
        lists = _retrieve(engine, idx, req, n, allowed, timings)
        chunks = engine.store.chunks_by_label(
            collection, list({label for ranked in lists.values() for label, _ in ranked}))
        # A label can vanish between retrieval and hydration under a concurrent delete.
        lists = {name: [(lb, s) for lb, s in ranked if lb in chunks]
                 for name, ranked in lists.items()}
        if not req.group:
            break
        doc_of = {label: sc.chunk.doc_id for label, sc in chunks.items()}
        grouped = {name: _group(ranked, doc_of) for name, ranked in lists.items()}
        exhausted = all(len(ranked) < n for ranked in lists.values())
        if exhausted or all(len(g) >= req.k for g in grouped.values()) or n >= 8 * MAX_K:
            break
        n *= 4  # many chunks per document: fetch deeper until k documents are covered
    t = time.perf_counter()
    hits = _fuse(lists, chunks, req, rrf_k)
    timings["fusion"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    return SearchResult(hits[: req.k], timings)


def _fuse(lists: dict[str, Ranked], stored: Mapping[int, StoredChunk], req: SearchRequest,
          rrf_k: int) -> list[Hit]:
    keyed: dict[str, list[tuple[str, float]]]
    if req.group:
        doc_of = {label: sc.chunk.doc_id for label, sc in stored.items()}
        best_label: dict[tuple[str, str], int] = {}
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
    hits: list[Hit] = []
    for key, score, comps in fused[: req.k]:
        if req.group:
            # The document's chunk from the component that ranks it best.
            name = min(comps, key=lambda c: (comps[c].rank, c != "dense"))
            label = best_label[(name, key)]
        else:
            label = int(key)
        sc = stored[label]
        hits.append(Hit(doc_id=sc.chunk.doc_id, chunk_id=sc.chunk.id, score=float(score),
                        components=comps, text=sc.chunk.text, title=sc.chunk.title,
                        metadata=sc.metadata))
    return hits


def embed_texts(engine: Engine, texts: Sequence[str],
                input_type: InputType = InputType.PASSAGE) -> list[list[float]]:
    for i, t in enumerate(texts):
        if not t or not t.strip():
            raise InputError(f"text #{i} is empty; nothing to embed")
    return engine.embedder.embed(list(texts), input_type).tolist()  # type: ignore[no-any-return]

"""Re-ranking: the configured re-ranker re-scores the first N hits of a search.

Fusion ranks by agreement between cheap retrievers; a re-ranker (a cross-encoder behind an
HTTP ``/rerank`` API, or a stronger local bi-encoder) reads the query and each candidate
together and is slower, so it sees only the top of the list. Each candidate is scored on
the text the index embedded for it (``Chunk.embed_text``: the document title, a newline,
the chunk), the first N are reordered by that score (ties keep their fused order), and the
rest follow unchanged, so re-ranking never drops a hit and never promotes one from beyond
the window it was given."""

from __future__ import annotations

import time
from dataclasses import replace

from semsearch.core.types import ComponentScore, Hit
from semsearch.errors import BackendError, InputError
from semsearch.ports import Attributes
from semsearch.runtime.engine import Engine

MAX_RERANK = 1000


def hit_text(hit: Hit) -> str:
    """What the re-ranker reads for a hit: what the index embedded for its chunk."""
    return f"{hit.title}\n{hit.text}" if hit.title else hit.text


def rerank_hits(engine: Engine, query: str, hits: list[Hit], top: int) -> list[Hit]:
    """``hits`` with the first ``top`` reordered by the re-ranker's score; each of those
    carries that score as its ``score`` and ``components["rerank"]`` (its new rank, from
    1, and the score). Raises InputError when no re-ranker is configured or ``top`` is out
    of range; BackendError when the re-ranker answers the wrong number of scores."""
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_RERANK:
        raise InputError(f"rerank must be a whole number from 0 (off) to {MAX_RERANK}, "
                         f"got {top!r}")
    if top == 0 or not hits:
        return list(hits)
    reranker = engine.reranker
    if reranker is None:
        raise InputError("re-ranking was asked for but no re-ranker is configured: set "
                         "SEMSEARCH_RERANKER=http (with SEMSEARCH_RERANKER_URL and "
                         "SEMSEARCH_RERANKER_FORMAT) or SEMSEARCH_RERANKER=local")
    if not query.strip():
        raise InputError("re-ranking needs a query text to score the hits against")
    head, tail = hits[:top], hits[top:]
    started = time.perf_counter()
    attrs: Attributes = {"semsearch.rerank.candidates": len(head),
             "semsearch.reranker": str(reranker.identity.get("provider", ""))}
    with engine.telemetry.span("semsearch.rerank", attrs):
        scores = reranker.rerank(query, [hit_text(h) for h in head])
    engine.telemetry.observe("semsearch.rerank.duration", time.perf_counter() - started,
                             attrs, description="time to re-rank one search's top hits")
    if len(scores) != len(head):
        raise BackendError(f"the re-ranker returned {len(scores)} scores for {len(head)} "
                           "hits")
    order = sorted(range(len(head)), key=lambda i: -scores[i])  # stable: ties keep order
    reranked = [
        replace(head[i], score=float(scores[i]),
                components={**head[i].components,
                            "rerank": ComponentScore(rank, float(scores[i]))})
        for rank, i in enumerate(order, start=1)]
    return reranked + tail

"""Retrieval quality on labelled queries (BEIR format): nDCG@10, MRR@10, Recall@100, MAP@100
per mode, plus query latency percentiles for each mode. Each mode also keeps its per-query
scores, and :func:`evaluate_collections` the query texts, so a report can say which queries
one mode (or version) wins and loses against another."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.core.metrics import evaluate, per_query
from semsearch.core.types import InputType, Mode
from semsearch.runtime.collection import Collection
from semsearch.runtime.engine import Engine
from semsearch.services.search import SearchRequest, search

MEASURES = ("ndcg@10", "mrr@10", "recall@100", "map@100")


@dataclass
class ModeReport:
    mode: str
    metrics: dict[str, float]
    queries: int
    latency_ms: dict[str, float]
    # query id -> measure -> score, for every judged query: what per-query comparisons read.
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Evaluation:
    """One collection evaluated on one dataset split: its reports by mode, what it was (the
    version the name pointed at, its model), and the texts of the judged queries."""

    collection: str
    version: str
    model: str
    dataset: str
    split: str
    fusion: str
    modes: list[ModeReport]
    queries: dict[str, str]

    def to_dict(self, with_queries: bool = False) -> dict[str, Any]:
        """Rounded means by mode; per-query scores and query texts only when asked, since
        they are as long as the dataset."""
        out: dict[str, Any] = {
            "collection": self.collection, "version": self.version, "model": self.model,
            "dataset": self.dataset, "split": self.split, "fusion": self.fusion,
            "modes": {r.mode: {**{k: round(v, 4) for k, v in r.metrics.items()},
                               "latency_ms": r.latency_ms} for r in self.modes}}
        if with_queries:
            out["queries"] = {qid: {"text": self.queries.get(qid, ""),
                                    **{r.mode: {k: round(v, 4) for k, v in
                                                r.per_query.get(qid, {}).items()}
                                       for r in self.modes}}
                              for qid in sorted({q for r in self.modes for q in r.per_query})}
        return out


def count_queries(engine: Engine, dataset: Path, split: str = "test") -> int:
    """Labelled queries of a dataset split (for a progress total)."""
    return len(engine.corpora.queries(dataset, split))


def evaluate_collection(engine: Engine, collection: str, dataset: Path,
                        modes: Sequence[Mode], *, split: str = "test", depth: int = 100,
                        fusion: str | None = None,
                        on_progress: Callable[[int], None] | None = None) -> list[ModeReport]:
    queries = engine.corpora.queries(dataset, split)
    qrels = engine.corpora.qrels(dataset, split)
    handle = engine.collection(collection)
    return _evaluate_modes(engine, handle, queries, qrels, modes, depth=depth, fusion=fusion,
                           on_progress=on_progress)


def evaluate_collections(engine: Engine, collections: Sequence[str], dataset: Path,
                         modes: Sequence[Mode], *, split: str = "test", depth: int = 100,
                         fusion: str | None = None,
                         on_progress: Callable[[int], None] | None = None) -> list[Evaluation]:
    """Evaluate several collections (or versions: ``docs@v1``, ``docs``) the same way on
    one dataset, for a before/after comparison. Every name is resolved before any query
    runs, so a wrong second name fails at once rather than after the first evaluation."""
    queries = engine.corpora.queries(dataset, split)
    qrels = engine.corpora.qrels(dataset, split)
    handles = [engine.collection(name) for name in collections]
    if any(m != Mode.KEYWORD for m in modes):
        for h in handles:
            h.embedder  # noqa: B018  (IdentityMismatchError now, not after the first run)
    from semsearch.services.tune import search_defaults

    return [Evaluation(collection=h.name, version=h.version, model=h.info.identity.model,
                       dataset=str(dataset), split=split,
                       fusion=fusion or search_defaults(engine, h).fusion,
                       modes=_evaluate_modes(engine, h, queries, qrels, modes, depth=depth,
                                             fusion=fusion, on_progress=on_progress),
                       queries=dict(queries))
            for h in handles]


def _evaluate_modes(engine: Engine, handle: Collection, queries: dict[str, str],
                    qrels: dict[str, dict[str, int]], modes: Sequence[Mode], *, depth: int,
                    fusion: str | None,
                    on_progress: Callable[[int], None] | None) -> list[ModeReport]:
    if any(m != Mode.KEYWORD for m in modes):
        # One batched pass fills the cache, so per-query searches don't embed one by one.
        handle.embedder.embed(list(queries.values()), InputType.QUERY)
    reports: list[ModeReport] = []
    for mode in modes:
        run: dict[str, dict[str, float]] = {}
        latencies: list[float] = []
        for qid, text in queries.items():
            started = time.perf_counter()
            result = search(engine, handle,
                            SearchRequest(query=text, mode=mode, k=depth, fusion=fusion))
            latencies.append((time.perf_counter() - started) * 1000)
            # Scores of fused runs can tie; rank order is what the measures must see.
            n = len(result.hits)
            run[qid] = {h.doc_id: float(n - i) for i, h in enumerate(result.hits)}
            if on_progress is not None:
                on_progress(1)
        lat = np.array(latencies) if latencies else np.zeros(1)
        reports.append(ModeReport(
            mode=mode.value, metrics=evaluate(run, qrels, MEASURES), queries=len(queries),
            latency_ms={"p50": round(float(np.percentile(lat, 50)), 3),
                        "p99": round(float(np.percentile(lat, 99)), 3)},
            per_query=per_query(run, qrels, MEASURES)))
    return reports

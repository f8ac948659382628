"""Retrieval quality on labelled queries (BEIR format): nDCG@10, MRR@10, Recall@100, MAP@100
per mode, plus query latency percentiles for each mode."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semsearch.core.metrics import evaluate
from semsearch.core.types import InputType, Mode
from semsearch.runtime.engine import Engine
from semsearch.services.search import SearchRequest, search

MEASURES = ("ndcg@10", "mrr@10", "recall@100", "map@100")


@dataclass
class ModeReport:
    mode: str
    metrics: dict[str, float]
    queries: int
    latency_ms: dict[str, float]


def count_queries(engine: Engine, dataset: Path, split: str = "test") -> int:
    """Labelled queries of a dataset split (for a progress total)."""
    return len(engine.corpora.queries(dataset, split))


def evaluate_collection(engine: Engine, collection: str, dataset: Path,
                        modes: Sequence[Mode], *, split: str = "test", depth: int = 100,
                        fusion: str = "rrf",
                        on_progress: Callable[[int], None] | None = None) -> list[ModeReport]:
    queries = engine.corpora.queries(dataset, split)
    qrels = engine.corpora.qrels(dataset, split)
    handle = engine.collection(collection)
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
                        "p99": round(float(np.percentile(lat, 99)), 3)}))
    return reports

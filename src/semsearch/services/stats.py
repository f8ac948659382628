"""Cumulative metering per collection, summed from the run history in the store."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from semsearch.core.metering import histogram_percentiles
from semsearch.runtime.engine import Engine

SUMMED = ("documents", "chunks", "embedded", "cache_hits", "cache_misses", "model_calls",
          "tokens", "truncated", "retries", "cost", "saved_cost", "seconds", "cache_errors")


def list_runs(engine: Engine, collection: str | None = None,
              limit: int = 1000) -> list[dict[str, Any]]:
    """Index and sync runs, newest first: start, end, status and what each did and cost."""
    return engine.store.list_runs(collection, limit=limit)


RECENT_RUNS = 1000


def last_successes(engine: Engine, limit: int = RECENT_RUNS) -> dict[tuple[str, str], float]:
    """When each collection's runs of each kind last succeeded, in Unix seconds, so an alert
    can see a sync CronJob that stopped succeeding (its failures are only in this history).
    Only the newest ``limit`` runs are read, because this is asked at every scrape: a
    (collection, kind) whose runs there all failed or are still running maps to 0.0, "no
    success in recent memory", which any staleness threshold catches."""
    last: dict[tuple[str, str], float] = {}
    for run in engine.store.list_runs(None, limit=limit):  # newest first
        key = (str(run["collection"]), str(run["kind"]))
        if last.get(key):
            continue
        finished = _timestamp(run["finished_at"]) if run["status"] == "ok" else None
        last[key] = finished or 0.0
    return last


def _timestamp(value: Any) -> float | None:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:
            return None
    if moment.tzinfo is None:  # the stores write UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@dataclass
class CollectionStats:
    """What a collection's runs did and cost, summed from the run history."""

    collection: str
    runs: int
    failed_runs: int
    provider_calls: int
    items_embedded: int
    tokens: int
    cost: float
    cache_hits: int
    cache_misses: int
    cache_hit_rate: float
    saved_cost: float
    truncated: int
    retries: int
    cache_errors: int
    provider_latency_ms: dict[str, float]
    last_run: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collection_stats(engine: Engine, collection: str | None = None) -> list[CollectionStats]:
    runs = engine.store.list_runs(collection, limit=100_000)
    by_collection: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_collection.setdefault(run["collection"], []).append(run)
    return [_summed(name, items) for name, items in sorted(by_collection.items())]


def _summed(name: str, items: list[dict[str, Any]]) -> CollectionStats:
    totals: dict[str, Any] = {key: 0 for key in SUMMED}
    hist: list[int] = []
    for run in items:
        stats = run["stats"]
        for key in SUMMED:
            totals[key] += stats.get(key, 0) or 0
        h = stats.get("latency_histogram") or []
        hist = [a + b for a, b in zip(hist, h, strict=True)] if hist else list(h)
    lookups = totals["cache_hits"] + totals["cache_misses"]
    return CollectionStats(
        collection=name, runs=len(items),
        failed_runs=sum(1 for r in items if r["status"] != "ok"),
        provider_calls=totals["model_calls"], items_embedded=totals["embedded"],
        tokens=totals["tokens"], cost=round(totals["cost"], 9),
        cache_hits=totals["cache_hits"], cache_misses=totals["cache_misses"],
        cache_hit_rate=round(totals["cache_hits"] / lookups, 4) if lookups else 0.0,
        saved_cost=round(totals["saved_cost"], 9), truncated=totals["truncated"],
        retries=totals["retries"], cache_errors=totals["cache_errors"],
        provider_latency_ms=histogram_percentiles(hist),
        last_run={k: items[0][k] for k in ("kind", "started_at", "finished_at", "status")})

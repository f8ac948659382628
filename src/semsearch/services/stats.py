"""Cumulative metering per collection, summed from the run history in the store."""

from __future__ import annotations

from typing import Any

from semsearch.core.metering import histogram_percentiles
from semsearch.runtime.engine import Engine

SUMMED = ("documents", "chunks", "embedded", "cache_hits", "cache_misses", "model_calls",
          "tokens", "truncated", "retries", "cost", "saved_cost", "seconds", "cache_errors")


def list_runs(engine: Engine, collection: str | None = None,
              limit: int = 1000) -> list[dict[str, Any]]:
    """Index and sync runs, newest first: start, end, status and what each did and cost."""
    return engine.store.list_runs(collection, limit=limit)


def collection_stats(engine: Engine, collection: str | None = None) -> list[dict[str, Any]]:
    runs = engine.store.list_runs(collection, limit=100_000)
    by_collection: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_collection.setdefault(run["collection"], []).append(run)
    out = []
    for name, items in sorted(by_collection.items()):
        totals: dict[str, Any] = {key: 0 for key in SUMMED}
        hist: list[int] = []
        for run in items:
            stats = run["stats"]
            for key in SUMMED:
                totals[key] += stats.get(key, 0) or 0
            h = stats.get("latency_histogram") or []
            hist = [a + b for a, b in zip(hist, h, strict=True)] if hist else list(h)
        lookups = totals["cache_hits"] + totals["cache_misses"]
        out.append({
            "collection": name,
            "runs": len(items),
            "failed_runs": sum(1 for r in items if r["status"] != "ok"),
            "provider_calls": totals["model_calls"],
            "items_embedded": totals["embedded"],
            "tokens": totals["tokens"],
            "cost": round(totals["cost"], 9),
            "cache_hits": totals["cache_hits"],
            "cache_misses": totals["cache_misses"],
            "cache_hit_rate": round(totals["cache_hits"] / lookups, 4) if lookups else 0.0,
            "saved_cost": round(totals["saved_cost"], 9),
            "truncated": totals["truncated"],
            "retries": totals["retries"],
            "cache_errors": totals["cache_errors"],
            "provider_latency_ms": histogram_percentiles(hist),
            "last_run": {k: items[0][k] for k in ("kind", "started_at", "finished_at",
                                                  "status")},
        })
    return out

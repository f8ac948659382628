"""Cost and cache metering per run and cumulative per collection (semsearch stats)."""

from __future__ import annotations

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.services.ingest import index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.services.stats import collection_stats
from semsearch.wiring import open_engine

PRICE = 0.02  # USD per million tokens, like text-embedding-3-small


def test_runs_are_priced_and_the_cache_saving_is_counted(settings: Settings) -> None:
    engine = open_engine(Settings(embedder_price_per_mtok=PRICE))
    try:
        cold = index_documents(engine, "a", iter_documents(sample_dir()))
        warm = index_documents(engine, "b", iter_documents(sample_dir()))
        stats = {row.collection: row.to_dict() for row in collection_stats(engine)}
    finally:
        engine.close()
    assert cold.tokens > 1000 and cold.cost == pytest.approx(cold.tokens * PRICE / 1e6, rel=1e-3)
    assert cold.cache_misses == cold.embedded == cold.chunks and cold.saved_cost == 0
    assert cold.provider_latency_ms["p50"] > 0 and cold.provider_latency_ms["p99"] > 0
    # The second collection is served by the cache: no tokens bought, the same amount saved.
    assert warm.tokens == 0 and warm.cost == 0 and warm.cache_hits == cold.chunks
    assert warm.saved_cost == pytest.approx(cold.cost, rel=1e-3)
    a, b = stats["a"], stats["b"]
    assert (a["runs"], a["provider_calls"], a["tokens"]) == (1, cold.model_calls, cold.tokens)
    assert a["cost"] == pytest.approx(cold.cost) and a["cache_hit_rate"] == 0.0
    assert b["cache_hit_rate"] == 1.0 and b["saved_cost"] == pytest.approx(warm.saved_cost)
    assert a["provider_latency_ms"]["p50"] > 0


def test_stats_are_cumulative_and_failed_runs_are_recorded(settings: Settings,
                                                           tmp_path: object) -> None:
    from pathlib import Path

    engine = open_engine(settings)
    try:
        index_documents(engine, "c", iter_documents(sample_dir()))
        bad = Path(str(tmp_path)) / "bad.jsonl"
        bad.write_text('{"_id": "x", "text": "fine text"}\n{broken\n')
        with pytest.raises(Exception, match="not JSON"):
            index_documents(engine, "c", iter_documents(bad), batch_size=1)
        index_documents(engine, "c", iter_documents(sample_dir()))
        (row,) = [r.to_dict() for r in collection_stats(engine, "c")]
        runs = engine.store.list_runs("c")
    finally:
        engine.close()
    assert row["runs"] == 3 and row["failed_runs"] == 1
    assert [r["status"] for r in runs] == ["ok", "failed", "ok"]
    assert "not JSON" in runs[1]["stats"]["status"]
    assert row["items_embedded"] == sum(r["stats"]["embedded"] for r in runs)

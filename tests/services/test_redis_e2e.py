"""The engine with its cache in the real Redis on 127.0.0.1:6379 (DB 14, flushed): shared
between two homes, and degrading, not failing, when Redis is unreachable."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.types import Mode
from semsearch.services.ingest import index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine

URL = "redis://127.0.0.1:6379/14"


@pytest.fixture
def redis_db() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail("Redis must run on 127.0.0.1:6379 for these tests (scripts/test.sh "
                    f"starts it): {exc}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _home(tmp_path: Path, name: str, models_dir: Path) -> Path:
    home = tmp_path / name
    home.mkdir()  # the built model comes from the session's SEMSEARCH_MODEL_CACHE_DIR
    return home


def test_two_homes_share_one_redis_cache(redis_db: redis.Redis, tmp_path: Path,
                                         models_dir: Path) -> None:
    first = open_engine(Settings(home=_home(tmp_path, "a", models_dir), cache_url=URL,
                                 cache_ttl_seconds=3600, embedder_threads=2))
    try:
        cold = index_documents(first, "s", iter_documents(sample_dir()))
    finally:
        first.close()
    keys = redis_db.keys("semsearch:emb:*")
    assert len(keys) == cold.chunks and 0 < redis_db.ttl(keys[0]) <= 3600
    second = open_engine(Settings(home=_home(tmp_path, "b", models_dir), cache_url=URL,
                                  embedder_threads=2))
    try:
        warm = index_documents(second, "s", iter_documents(sample_dir()))
        hit = search(second, "s", SearchRequest("sourdough", mode=Mode.DENSE, k=1)).hits[0]
    finally:
        second.close()
    assert warm.embedded == 0 and warm.model_calls == 0 and warm.cache_hits == cold.chunks
    assert hit.doc_id == "sourdough-starter.md"


def test_unreachable_redis_degrades_to_computing(tmp_path: Path, models_dir: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = open_engine(Settings(home=_home(tmp_path, "c", models_dir), embedder_threads=2,
                                  cache_url=f"redis://127.0.0.1:{port}/0", cache_lru_size=0))
    try:
        with caplog.at_level(logging.WARNING, logger="semsearch.cache"):
            report = index_documents(engine, "s", iter_documents(sample_dir()), batch_size=3)
            hits = search(engine, "s", SearchRequest("burns first aid", k=1)).hits
        meter = engine.embedder.cache.meter  # type: ignore[attr-defined]
        assert meter.errors >= 1 and meter.hits == 0  # the outage is counted, not hidden
        from semsearch.services.stats import collection_stats

        (stats,) = [r.to_dict() for r in collection_stats(engine, "s")]
    finally:
        engine.close()
    assert report.documents == 12 and report.embedded == report.chunks
    # ... and reported: in the run's summary (index --json) and the collection's stats.
    assert 1 <= report.cache_errors <= meter.errors
    assert stats["cache_errors"] == report.cache_errors
    assert hits[0].doc_id == "first-aid-burns.md"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(port) in warnings[0].getMessage()

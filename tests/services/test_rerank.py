"""Re-ranking a real search's hits (a real SQLite index built with the fake embedder) with
the engine's configured re-ranker, a loopback server speaking TEI's ``/rerank``: the first N
reordered by its scores, the rest untouched, the scores and ranks recorded on each hit, the
re-ranker built only when first asked for and closed with the engine, and clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from semsearch.config import Settings
from semsearch.core.types import Document, Mode
from semsearch.errors import BackendError, InputError
from semsearch.runtime.engine import Engine
from semsearch.services.ingest import index_documents
from semsearch.services.rerank import hit_text, rerank_hits
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine
from tests.default_path import modules_loaded_by_default
from tests.fakes.rerank_server import FakeRerankServer, overlap

DOCS = [
    Document("d1", "Sourdough bread rises slowly with wild yeast.", title="Sourdough"),
    Document("d2", "Bread flour has more protein than cake flour.", title="Flour"),
    Document("d3", "Wild yeast and bacteria make a sourdough starter sour.",
             title="Starter"),
    Document("d4", "Bake bread in a hot oven with steam for a crisp crust.", title="Baking"),
    Document("d5", "Store bread in a paper bag, never in the fridge.", title="Storage"),
    Document("d6", "Yeast eats sugar and makes carbon dioxide, so dough rises.",
             title="Yeast"),
]
QUERY = "why does sourdough bread rise with wild yeast"


@pytest.fixture
def server() -> Iterator[FakeRerankServer]:
    with FakeRerankServer("tei", api_key="rk") as srv:
        yield srv


def _engine(tmp_path: Path, **overrides: object) -> Engine:
    settings = Settings(home=tmp_path / "home", embedder="fake", cache_url="none",
                        model_cache_dir=tmp_path / "models", **overrides)  # type: ignore[arg-type]
    return open_engine(settings)


@pytest.fixture
def engine(tmp_path: Path, server: FakeRerankServer) -> Iterator[Engine]:
    eng = _engine(tmp_path, reranker="http", reranker_url=server.url,
                  reranker_format="tei", reranker_api_key="rk")
    index_documents(eng, "bread", DOCS)
    try:
        yield eng
    finally:
        eng.close()


def _hits(engine: Engine, k: int = 6) -> list:  # type: ignore[type-arg]
    return list(search(engine, "bread", SearchRequest(query=QUERY, mode=Mode.HYBRID,
                                                      k=k)).hits)


def test_the_top_n_are_reordered_by_the_rerankers_scores(engine: Engine,
                                                          server: FakeRerankServer) -> None:
    hits = _hits(engine)
    assert len(hits) == 6
    out = rerank_hits(engine, QUERY, hits, top=4)
    # The re-ranker read what the index embedded: title, newline, chunk text.
    assert server.requests[-1].body["texts"] == [f"{h.title}\n{h.text}" for h in hits[:4]]
    expected = [overlap(QUERY, hit_text(h)) for h in hits[:4]]
    order = sorted(range(4), key=lambda i: -expected[i])  # ties keep the fused order
    assert [h.doc_id for h in out[:4]] == [hits[i].doc_id for i in order]
    assert [h.score for h in out[:4]] == [expected[i] for i in order]
    for rank, h in enumerate(out[:4], start=1):
        assert h.components["rerank"].rank == rank
        assert h.components["rerank"].score == h.score
        before = next(x for x in hits if x.doc_id == h.doc_id)
        assert {k: v for k, v in h.components.items() if k != "rerank"} == before.components
    # Hits past the window keep their place, fused score and components.
    assert out[4:] == hits[4:]
    assert "rerank" not in out[4].components
    assert hits[0].components.get("rerank") is None  # the input was not changed


def test_a_window_larger_than_the_hits_reranks_them_all(engine: Engine) -> None:
    hits = _hits(engine, k=3)
    out = rerank_hits(engine, QUERY, hits, top=50)
    assert sorted(h.doc_id for h in out) == sorted(h.doc_id for h in hits)
    assert all("rerank" in h.components for h in out)
    assert [h.score for h in out] == sorted((h.score for h in out), reverse=True)


def test_zero_is_off_and_sends_nothing(engine: Engine, server: FakeRerankServer) -> None:
    hits = _hits(engine)
    assert rerank_hits(engine, QUERY, hits, top=0) == hits
    assert rerank_hits(engine, QUERY, [], top=5) == []
    assert server.requests == []


@pytest.mark.parametrize("top", [-1, 1001, 2.5, True])
def test_a_bad_window_is_refused(engine: Engine, top: object) -> None:
    with pytest.raises(InputError, match="rerank must be a whole number from 0"):
        rerank_hits(engine, QUERY, _hits(engine), top=top)  # type: ignore[arg-type]


def test_the_rerankers_failures_are_clear_errors(engine: Engine,
                                                 server: FakeRerankServer) -> None:
    hits = _hits(engine)
    server.script("401")
    with pytest.raises(BackendError, match="SEMSEARCH_RERANKER_API_KEY"):
        rerank_hits(engine, QUERY, hits, top=3)
    with pytest.raises(InputError, match="needs a query text"):
        rerank_hits(engine, " ", hits, top=3)


def test_without_a_reranker_asking_for_one_says_how_to_configure_it(tmp_path: Path) -> None:
    eng = _engine(tmp_path)
    try:
        index_documents(eng, "bread", DOCS)
        assert eng.reranker is None
        hits = _hits(eng)
        assert rerank_hits(eng, QUERY, hits, top=0) == hits  # off needs none
        with pytest.raises(InputError, match="SEMSEARCH_RERANKER=http"):
            rerank_hits(eng, QUERY, hits, top=3)
    finally:
        eng.close()


def test_the_reranker_is_built_on_first_use_and_closed_with_the_engine(
        tmp_path: Path, server: FakeRerankServer) -> None:
    eng = _engine(tmp_path, reranker="http", reranker_url=server.url, reranker_api_key="rk")
    try:
        assert eng._reranker is None  # nothing built by opening the engine
        first = eng.reranker
        assert first is not None and eng.reranker is first
        assert first.identity["format"] == "tei"
    finally:
        eng.close()
    assert first._client.is_closed  # type: ignore[attr-defined]


def test_an_unknown_reranker_fails_when_the_engine_opens(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown SEMSEARCH_RERANKER 'cross'; known: http, "
                                         "local"):
        _engine(tmp_path, reranker="cross")


def test_the_default_path_loads_no_reranker(tmp_path: Path) -> None:
    picked = "m.startswith('semsearch.adapters.rerankers')"
    assert modules_loaded_by_default(tmp_path, picked) == "[]"


def test_search_rerank_n_reorders_the_top_n_of_the_search(engine: Engine,
                                                          server: FakeRerankServer) -> None:
    plain = _hits(engine)
    out = search(engine, "bread", SearchRequest(query=QUERY, k=6, rerank=4)).hits
    assert out == rerank_hits(engine, QUERY, plain, top=4)
    assert all("rerank" in h.components for h in out[:4])
    # Asked for fewer than the window: the window is still searched, then cut to k.
    top2 = search(engine, "bread", SearchRequest(query=QUERY, k=2, rerank=4)).hits
    assert [h.doc_id for h in top2] == [h.doc_id for h in out[:2]]
    # 0 turns it off; re-ranking then MMR works on the re-ranked order.
    n = len(server.requests)
    assert search(engine, "bread", SearchRequest(query=QUERY, k=6, rerank=0)).hits == plain
    assert len(server.requests) == n
    both = search(engine, "bread", SearchRequest(query=QUERY, k=3, rerank=4, mmr=1.0)).hits
    assert [h.doc_id for h in both] == [h.doc_id for h in out[:3]]
    assert all({"rerank", "mmr"} <= set(h.components) for h in both)


def test_rerank_top_setting_reranks_every_search_unless_told_zero(
        tmp_path: Path, server: FakeRerankServer) -> None:
    eng = _engine(tmp_path, reranker="http", reranker_url=server.url, reranker_api_key="rk",
                  rerank_top=3)
    try:
        index_documents(eng, "bread", DOCS)
        hits = search(eng, "bread", SearchRequest(query=QUERY, k=5)).hits
        assert all("rerank" in h.components for h in hits[:3])
        assert "rerank" not in hits[3].components
        off = search(eng, "bread", SearchRequest(query=QUERY, k=5, rerank=0)).hits
        assert not any("rerank" in h.components for h in off)
        # A pure vector sum has no query text to re-rank against: the default skips it.
        pure = search(eng, "bread", SearchRequest(plus=("sourdough",), k=3)).hits
        assert pure and not any("rerank" in h.components for h in pure)
    finally:
        eng.close()


def test_search_rerank_without_a_reranker_says_how_to_configure_it(tmp_path: Path) -> None:
    eng = _engine(tmp_path)
    try:
        index_documents(eng, "bread", DOCS)
        with pytest.raises(InputError, match="SEMSEARCH_RERANKER=http"):
            search(eng, "bread", SearchRequest(query=QUERY, rerank=3))
    finally:
        eng.close()

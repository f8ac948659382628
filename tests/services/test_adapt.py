"""``services.adapt``: a query adapter trained on a collection's labelled pairs becomes a new
stamped identity that is re-indexed from the cache, gated on the test split, swapped in,
served by every process from the store, and rolled back; other collections are untouched."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from semsearch.config import Settings
from semsearch.core.adapter import AdapterConfig, split_adapted
from semsearch.core.types import Mode
from semsearch.errors import InputError, NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.services.adapt import adapt
from semsearch.services.ingest import index_documents
from semsearch.services.search import SearchRequest, search
from semsearch.services.versions import rollback
from semsearch.wiring import open_engine
from tests.services.adapt_data import TOPICS, acronym, documents, write_beir

FAST = AdapterConfig(learning_rate=0.02, max_steps=150, eval_every=5, l2=0.001)


@pytest.fixture
def fake_settings(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Settings:
    """The test's home (or PostgreSQL database) with the fake embedder: no model to load."""
    monkeypatch.setenv("SEMSEARCH_EMBEDDER", "fake")
    settings: Settings = request.getfixturevalue("settings")
    return settings


@pytest.fixture
def fake_engine(fake_settings: Settings) -> Iterator[Engine]:
    eng = open_engine(fake_settings)
    try:
        yield eng
    finally:
        eng.close()


def _top(engine: Engine, name: str, query: str, mode: Mode = Mode.DENSE) -> list[str]:
    return [h.doc_id for h in search(engine, name, SearchRequest(query, mode=mode, k=3)).hits]


def _test_queries() -> list[str]:
    return [f"what about {acronym(t)} today" for t in range(TOPICS)]


def test_adapt_gates_swaps_serves_from_the_store_and_rolls_back(
        fake_engine: Engine, fake_settings: Settings, tmp_path: Path) -> None:
    engine = fake_engine
    data = write_beir(tmp_path)
    index_documents(engine, "acr", documents())
    index_documents(engine, "other", documents())
    other_before = {q: _top(engine, "other", q) for q in _test_queries()}
    base_identity = engine.collection("acr").info.identity

    report = adapt(engine, "acr", data, config=FAST)

    rep = report.reindex
    assert rep is not None and rep.swapped and report.swapped
    assert (rep.previous, rep.version) == ("acr", "acr@v2")
    # Passage vectors all came from the cache: the model never ran over the corpus.
    assert rep.build.embedded == 0 and rep.build.cache_hits == rep.build.chunks > 0
    assert report.train.holdout_ndcg_after > report.train.holdout_ndcg_before
    assert rep.gate is not None and rep.gate.passed
    assert rep.gate.modes["dense"]["delta"] > 0.3
    assert rep.gate.modes["keyword"]["delta"] == 0.0  # BM25 is not the adapter's business
    info = engine.collection("acr").info
    split = split_adapted(info.identity)
    assert split is not None and split == (base_identity, report.fingerprint)
    hits = sum(_top(engine, "acr", q)[0] == f"doc{t}" for t, q in enumerate(_test_queries()))
    assert hits >= TOPICS * 0.8

    # Another process (a replica) finds the adapter in the store and serves the same.
    other_engine = open_engine(fake_settings)
    try:
        assert other_engine.collection("acr").info.identity == info.identity
        for q in _test_queries()[:5]:
            assert _top(other_engine, "acr", q) == _top(engine, "acr", q)
    finally:
        other_engine.close()

    # The adaptation belongs to "acr": "other" keeps its identity, version and answers.
    other = engine.collection("other")
    assert (other.version, other.info.identity) == ("other", base_identity)
    assert {q: _top(engine, "other", q) for q in _test_queries()} == other_before
    assert engine.embedder.identity == base_identity

    back = rollback(engine, "acr")
    assert (back["active"], back["previous"]) == ("acr", "acr@v2")
    assert engine.collection("acr").info.identity == base_identity
    assert {q: _top(engine, "acr", q) for q in _test_queries()} == other_before


def test_adapting_again_replaces_the_adapter_instead_of_stacking(
        fake_engine: Engine, tmp_path: Path) -> None:
    data = write_beir(tmp_path)
    index_documents(fake_engine, "acr", documents())
    first = adapt(fake_engine, "acr", data, config=FAST)
    second = adapt(fake_engine, "acr", data, gate_modes=(Mode.DENSE,),
                   config=AdapterConfig(learning_rate=0.02, max_steps=60, eval_every=5,
                                        l2=0.001, seed=1))
    assert second.reindex is not None and second.reindex.version == "acr@v3"
    assert second.base_identity == first.base_identity  # trained on the base model's vectors
    assert second.identity["revision"].count("+adapter:") == 1


def test_a_failing_gate_keeps_the_old_version(fake_engine: Engine, tmp_path: Path) -> None:
    data = write_beir(tmp_path)
    index_documents(fake_engine, "acr", documents())
    report = adapt(fake_engine, "acr", data, config=FAST, tolerance=-1.0)  # nothing passes
    assert report.reindex is not None and report.reindex.gate is not None
    assert not report.reindex.gate.passed and not report.swapped
    assert fake_engine.resolve("acr") == "acr"
    assert "gate failed" in report.reindex.message


def test_bad_input_is_refused_with_a_clear_error(fake_engine: Engine, tmp_path: Path) -> None:
    index_documents(fake_engine, "acr", documents())
    data = write_beir(tmp_path)
    with pytest.raises(NotFoundError, match="unknown collection 'nope'"):
        adapt(fake_engine, "nope", data)
    with pytest.raises(InputError, match="not a version"):
        adapt(fake_engine, "acr@v1", data)
    with pytest.raises(InputError, match="is the training split"):
        adapt(fake_engine, "acr", data, gate_split="train")
    with pytest.raises(InputError, match="unknown adaptation method"):
        adapt(fake_engine, "acr", data, method="magic")
    no_train = write_beir(tmp_path / "a", train=False)
    with pytest.raises(InputError, match="no training split 'train'"):
        adapt(fake_engine, "acr", no_train)
    no_test = write_beir(tmp_path / "b", test=False)
    with pytest.raises(InputError, match="no gate split 'test'"):
        adapt(fake_engine, "acr", no_test)
    unknown_docs = write_beir(tmp_path / "c", doc_prefix="elsewhere")
    with pytest.raises(InputError, match="no labelled pairs for collection 'acr'"):
        adapt(fake_engine, "acr", unknown_docs)
    assert [c.name for c in fake_engine.store.list_collections()] == ["acr"]  # nothing built


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None,
                    reason="torch is installed: the fine-tune path is available")
def test_finetune_without_torch_names_the_install_command(
        fake_engine: Engine, tmp_path: Path) -> None:
    index_documents(fake_engine, "acr", documents())
    with pytest.raises(InputError, match=r"pip install torch==2\.13\.0 sentence-transformers"):
        adapt(fake_engine, "acr", write_beir(tmp_path), method="finetune")


def test_replicas_on_postgresql_serve_the_adapter_from_the_store(
        postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas share only the database: each has its own home and embedding cache, so
    the one that did not adapt finds the weights nowhere but in the store's artifacts."""
    monkeypatch.setenv("SEMSEARCH_EMBEDDER", "fake")
    monkeypatch.setenv("SEMSEARCH_STORE", postgres_url)
    replicas = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        replicas.append(open_engine(Settings(home=tmp_path / name)))
    a, b = replicas
    try:
        index_documents(a, "acr", documents())
        report = adapt(a, "acr", write_beir(tmp_path), config=FAST)
        assert report.swapped
        assert b.collection("acr").info.identity == a.collection("acr").info.identity
        for q in _test_queries()[:6]:
            assert _top(b, "acr", q) == _top(a, "acr", q)
        assert sum(_top(b, "acr", q)[0] == f"doc{t}"
                   for t, q in enumerate(_test_queries())) >= TOPICS * 0.8
    finally:
        for engine in replicas:
            engine.close()


def test_training_queries_the_gate_also_asks_are_left_out(
        fake_engine: Engine, tmp_path: Path) -> None:
    """SciFact's train split repeats two of its test claims under other ids: training on
    them would let the gate judge the adapter on what it learned."""
    data = write_beir(tmp_path)
    with (data / "queries.jsonl").open("a", encoding="utf-8") as fh:
        fh.write('{"_id": "dup", "text": "what about zx0 today"}\n')
    with (data / "qrels" / "train.tsv").open("a", encoding="utf-8") as fh:
        fh.write("dup\tdoc0\t1\n")
    index_documents(fake_engine, "acr", documents())
    report = adapt(fake_engine, "acr", data, gate_modes=(Mode.DENSE,),
                   config=AdapterConfig(learning_rate=0.02, max_steps=20, eval_every=5))
    assert report.train.excluded == 1 and report.train.queries == 2 * TOPICS

"""The engine end to end on the real model: index, re-index, search, filter, update, delete."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.filters import parse_filter
from semsearch.core.types import Document, Mode
from semsearch.errors import IdentityMismatchError, InputError, NotFoundError, SourceError
from semsearch.runtime.engine import Engine
from semsearch.services.ingest import delete_documents, index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine

VEG = "how do I keep vegetables fresh"


def _docs() -> list[Document]:
    return list(iter_documents(sample_dir()))


def _ids(engine: Engine, query: str, mode: Mode, k: int = 5, **kw: object) -> list[str]:
    req = SearchRequest(query=query, mode=mode, k=k, **kw)  # type: ignore[arg-type]
    return [h.doc_id for h in search(engine, "s", req).hits]


def test_index_then_reindex_calls_the_model_zero_times(engine: Engine) -> None:
    first = index_documents(engine, "s", _docs())
    assert first.documents == first.new == 12 and first.chunks >= 12
    assert first.embedded == first.chunks and first.cache_hits == 0 and first.model_calls >= 1
    again = index_documents(engine, "s", _docs())
    assert (again.unchanged, again.embedded, again.model_calls, again.chunks) == (12, 0, 0, 0)
    # A new collection over the same text: every vector comes from the cache.
    other = index_documents(engine, "s2", _docs())
    assert other.embedded == 0 and other.model_calls == 0
    assert other.cache_hits == first.chunks


@pytest.mark.parametrize("mode", list(Mode))
def test_each_mode_finds_the_right_document(engine: Engine, mode: Mode) -> None:
    index_documents(engine, "s", _docs())
    hits = search(engine, "s", SearchRequest(VEG, mode=mode, k=3)).hits
    assert hits[0].doc_id == "storing-vegetables.md"
    assert hits[0].title == "Storing vegetables so they last"
    assert len({h.doc_id for h in hits}) == len(hits)  # grouped by document
    expected = {"dense", "keyword"} if mode == Mode.HYBRID else {mode.value}
    assert set(hits[0].components) == expected
    assert hits[0].components[next(iter(expected))].rank == 1


def test_hybrid_fusion_options(engine: Engine) -> None:
    index_documents(engine, "s", _docs())
    for fusion in ("rrf", "minmax", "zscore"):
        assert _ids(engine, VEG, Mode.HYBRID, fusion=fusion)[0] == "storing-vegetables.md"
    dense_only = _ids(engine, "wild yeast bread", Mode.HYBRID, fusion="minmax",
                      weights={"dense": 1.0, "keyword": 0.0})
    assert dense_only == _ids(engine, "wild yeast bread", Mode.DENSE)[: len(dense_only)]


def test_chunk_results_when_asked(engine: Engine) -> None:
    index_documents(engine, "s", _docs())
    hits = search(engine, "s", SearchRequest(VEG, mode=Mode.DENSE, k=20, group=False)).hits
    assert len({h.chunk_id for h in hits}) == len(hits)
    assert all(h.chunk_id.startswith(h.doc_id + "#") for h in hits)


def _tagged(n: int) -> list[Document]:
    return [Document(f"t{i}", f"Shared garden note number {i} about tomatoes and soil.",
                     metadata={"group": "even" if i % 2 == 0 else "odd", "n": i})
            for i in range(n)]


@pytest.mark.parametrize("mode", list(Mode))
def test_filters_return_k_when_k_match(engine: Engine, mode: Mode) -> None:
    index_documents(engine, "s", [*_docs(), *_tagged(40)])
    filt = parse_filter({"group": "odd", "n": {"gte": 10}})
    hits = search(engine, "s", SearchRequest("garden tomatoes", mode=mode, k=10,
                                             filter=filt)).hits
    assert len(hits) == 10
    assert all(h.metadata["group"] == "odd" and h.metadata["n"] >= 10 for h in hits)
    few = search(engine, "s", SearchRequest("garden tomatoes", mode=mode, k=10,
                                            filter=parse_filter({"n": {"in": [3, 5]}}))).hits
    assert sorted(h.doc_id for h in few) == ["t3", "t5"]
    none = search(engine, "s", SearchRequest("garden", mode=mode,
                                             filter=parse_filter({"group": "none"}))).hits
    assert none == []


def test_updates_and_deletes_show_immediately(engine: Engine) -> None:
    index_documents(engine, "s", _docs())
    changed = Document("compost.md", "Penguins huddle together to survive the Antarctic "
                       "winter.", title="Penguins")
    report = index_documents(engine, "s", [changed])
    assert report.changed == 1 and report.embedded >= 1
    for mode in Mode:
        assert _ids(engine, "penguins antarctic winter", mode, k=1) == ["compost.md"]
    assert "compost.md" not in _ids(engine, "composting kitchen scraps", Mode.KEYWORD)
    assert delete_documents(engine, "s", ["compost.md", "not-there"]) == 1
    for mode in Mode:
        assert "compost.md" not in _ids(engine, "penguins antarctic winter", mode, k=12)
    assert engine.store.get_collection("s").documents == 11


@pytest.mark.embedded_only(reason="reads or damages the SQLite store and index files")
def test_derived_indexes_rebuild_to_the_same_results(engine: Engine, settings: Settings) -> None:
    index_documents(engine, "s", _docs())
    queries = [VEG, "wifi router placement", "burn first aid", "sleep schedule"]
    before = {(q, m): _ids(engine, q, m, k=12) for q in queries for m in Mode}
    engine.forget_indexes("s")
    shutil.rmtree(settings.index_dir("s"))
    after = {(q, m): _ids(engine, q, m, k=12) for q in queries for m in Mode}
    assert after == before
    # The explicit command: same answers, every vector from the cache, nothing re-embedded.
    from semsearch.services.maintenance import rebuild_indexes

    (settings.index_dir("s") / "vectors" / "vectors.npy").write_bytes(b"corrupt")
    report = rebuild_indexes(engine, "s")
    assert report.embedded == 0 and report.cache_hits == report.chunks > 0
    assert {(q, m): _ids(engine, q, m, k=12) for q in queries for m in Mode} == before


def test_other_model_identity_is_refused_and_nothing_is_lost(engine: Engine,
                                                             settings: Settings) -> None:
    index_documents(engine, "s", _docs())
    other = open_engine(Settings(embedder_precision="fp32"))
    try:
        with pytest.raises(IdentityMismatchError, match=r"int8.*fp32.*semsearch reindex -c s "
                                                        r"--model "):
            search(other, "s", SearchRequest(VEG))
        with pytest.raises(IdentityMismatchError):
            index_documents(other, "s", _docs()[:1])
    finally:
        other.close()
    assert engine.store.get_collection("s").documents == 12
    assert _ids(engine, VEG, Mode.HYBRID, k=1) == ["storing-vegetables.md"]


def test_bad_input_is_refused_and_stored_data_survives(engine: Engine, tmp_path: Path) -> None:
    index_documents(engine, "s", _docs())
    with pytest.raises(InputError, match="query is empty"):
        search(engine, "s", SearchRequest("  "))
    with pytest.raises(NotFoundError, match="unknown collection 'nope'"):
        search(engine, "nope", SearchRequest("x"))
    with pytest.raises(InputError, match="no text and no title"):
        index_documents(engine, "s", [Document("blank", "  ")])
    skipped = index_documents(engine, "s", [Document("blank", "  "), Document("ok", "fine")],
                              skip_invalid=True)
    assert (skipped.documents, skipped.skipped, skipped.new) == (2, 1, 1)
    assert skipped.skipped_reasons == ["document 'blank' has no text and no title"]
    huge = Document("huge", "x" * (engine.settings.max_text_chars + 1))
    with pytest.raises(InputError, match="'huge' has 1,000,001 characters"):
        index_documents(engine, "s", [huge])
    with pytest.raises(InputError, match="collection name"):
        index_documents(engine, "bad/name", _docs())
    corpus = tmp_path / "c.jsonl"
    good = [json.dumps({"_id": f"j{i}", "text": f"jsonl line {i} about kites"}) for i in range(3)]
    corpus.write_text("\n".join([*good, "{not json", good[0]]) + "\n")
    with pytest.raises(SourceError, match=r"c\.jsonl:4: not JSON"):
        index_documents(engine, "s", iter_documents(corpus), batch_size=2)
    ids = engine.store.all_doc_ids("s")
    assert {"j0", "j1"} <= set(ids) and "storing-vegetables.md" in ids
    assert _ids(engine, "kites", Mode.KEYWORD, k=3)[:1] in (["j0"], ["j1"])
    assert _ids(engine, VEG, Mode.HYBRID, k=1) == ["storing-vegetables.md"]


@pytest.mark.embedded_only(reason="reads or damages the SQLite store and index files")
def test_document_vector_is_the_normalized_mean_of_its_chunks(engine: Engine) -> None:
    import sqlite3

    import numpy as np

    from semsearch.core.types import InputType

    sentences = " ".join(f"Sentence {i} talks about rivers, bridges and boats." for i in range(80))
    index_documents(engine, "s", [Document("long", sentences, title="Rivers")])
    chunks = [sc for batch in engine.store.iter_chunks("s") for sc in batch]
    assert len(chunks) >= 2 and all(sc.chunk.title == "Rivers" for sc in chunks)
    vecs = engine.embedder.embed([sc.chunk.embed_text for sc in chunks], InputType.PASSAGE)
    mean = vecs.mean(axis=0)
    mean /= np.linalg.norm(mean)
    with sqlite3.connect(engine.settings.store_path) as conn:
        (blob,) = conn.execute("SELECT doc_vector FROM documents WHERE id = 'long'").fetchone()
    stored = np.frombuffer(blob, dtype=np.float32)
    assert np.allclose(stored, mean, atol=1e-6)


def test_two_processes_on_one_home_see_each_others_writes(engine: Engine,
                                                          settings: Settings) -> None:
    """Two engines on one home behave like two `serve` workers: each keeps its own
    in-memory indexes and catches up with the other's committed writes."""
    other = open_engine(settings)
    try:
        index_documents(engine, "s", _docs()[:6])
        first = _ids(other, "anything at all", Mode.KEYWORD, k=12)
        assert set(first) <= {d.id for d in _docs()[:6]}
        index_documents(engine, "s", _docs()[6:])
        calls_before = other.embedder.embedder.meter.snapshot().calls
        for mode in Mode:
            assert "storing-vegetables.md" in _ids(other, VEG, mode, k=12)
        # The other engine reloaded the saved files; it did not re-embed the corpus.
        assert other.embedder.embedder.meter.snapshot().calls - calls_before <= 1
        delete_documents(other, "s", ["storing-vegetables.md"])
        for mode in Mode:
            assert "storing-vegetables.md" not in _ids(engine, VEG, mode, k=12)
        assert _ids(engine, "sourdough starter", Mode.KEYWORD, k=1) == ["sourdough-starter.md"]
    finally:
        other.close()


def test_creating_a_collection_another_process_just_created_opens_it(
        engine: Engine, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two consumers (or syncs) starting at once both find the collection missing and both
    create it: the one that loses the race opens the winner's instead of failing."""
    other = open_engine(settings)
    try:
        other.collection("race", create=True)
        real = engine.store.get_collection
        calls = {"n": 0}

        def missing_once(name: str) -> object:
            calls["n"] += 1
            if calls["n"] == 1:  # this process looked before the other's commit
                raise NotFoundError(f"unknown collection {name!r}")
            return real(name)

        monkeypatch.setattr(engine.store, "get_collection", missing_once)
        handle = engine.collection("race", create=True)
        assert handle.version == "race" and not handle.created
    finally:
        other.close()

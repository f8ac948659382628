"""Versioned collections: re-index into a shadow version, dry-run estimates, the eval gate,
atomic swap and rollback, dropping versions, compaction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.types import Document, Mode
from semsearch.errors import IdentityMismatchError, InputError, NotFoundError
from semsearch.runtime.embedding import CachedEmbedder
from semsearch.runtime.engine import Engine
from semsearch.services.collections import (
    compact_collection,
    describe_collections,
    drop_collection,
    versions,
)
from semsearch.services.ingest import delete_documents, index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.services.search import SearchRequest, search
from semsearch.services.versions import activate, plan_reindex, reindex, rollback
from semsearch.wiring import open_engine
from tests.fakes.embedders import NoiseEmbedder

VEG = "how do I keep vegetables fresh"
QUERIES = (VEG, "bread baking at home", "saving money on energy", "first aid for burns")


def _ids(engine: Engine, name: str, query: str, mode: Mode = Mode.HYBRID) -> list[str]:
    return [h.doc_id for h in search(engine, name, SearchRequest(query, mode=mode, k=5)).hits]


def _answers(engine: Engine, name: str) -> dict[tuple[str, str], list[str]]:
    return {(q, m.value): _ids(engine, name, q, m) for q in QUERIES for m in Mode}


SHORT = [Document(f"note-{i}", text, f"Note {i}") for i, text in enumerate([
    "Pickled onions keep for months in a cool cupboard.",
    "A cast iron pan needs a thin coat of oil after washing.",
    "Wool jumpers shrink in hot water; wash them cold.",
    "Sourdough starter wants feeding once a day at room temperature."])]


@pytest.fixture
def docs() -> list[Document]:
    """The sample corpus (long documents) and a few short notes, as real corpora mix."""
    return list(iter_documents(sample_dir())) + SHORT


def test_chunker_reindex_reuses_cached_chunks_swaps_and_rolls_back(
        engine: Engine, docs: list[Document]) -> None:
    index_documents(engine, "s", docs)
    before = _answers(engine, "s")
    plan = plan_reindex(engine, "s", chunker={"max_tokens": 96, "overlap_tokens": 16})
    assert (plan.active, plan.target, plan.documents) == ("s", "s@v2", len(docs))
    assert plan.chunker["max_tokens"] == 96 and not plan.same_identity
    # Chunks whose text the new chunker leaves as it was (the short notes) are cached.
    assert plan.cached_chunks == len(SHORT) < plan.chunks
    assert plan.estimated_cost == 0.0 and plan.estimated_seconds and \
        plan.estimated_seconds > 0

    report = reindex(engine, "s", chunker={"max_tokens": 96, "overlap_tokens": 16})
    assert report.swapped and report.version == "s@v2" and report.previous == "s"
    assert report.build.chunks == plan.chunks
    assert report.build.cache_hits == plan.cached_chunks
    assert report.build.embedded == plan.chunks - plan.cached_chunks
    assert report.build.tokens == plan.tokens_to_embed
    assert engine.resolve("s") == "s@v2"
    assert engine.store.get_collection("s@v2").chunks == plan.chunks
    assert _ids(engine, "s", VEG)[0] == "storing-vegetables.md"

    row = next(r.to_dict() for r in describe_collections(engine) if r.name == "s")
    assert (row["active"], row["active_version"], row["previous"]) == ("s@v2", 2, ["s"])
    assert [(v["name"], v["active"]) for v in row["versions"]] == [("s", False),
                                                                    ("s@v2", True)]
    assert row["chunker"]["max_tokens"] == 96

    assert rollback(engine, "s") == {"collection": "s", "active": "s", "previous": "s@v2"}
    assert _answers(engine, "s") == before  # the old version, untouched
    assert activate(engine, "s", 2)["active"] == "s@v2"
    with pytest.raises(InputError, match="already serves"):
        activate(engine, "s", 2)
    with pytest.raises(InputError, match="is the active version"):
        drop_collection(engine, "s@v2")
    assert drop_collection(engine, "s@v1") == ["s"]  # the kept first version
    with pytest.raises(NotFoundError, match="no previous version"):
        rollback(engine, "s")
    assert _ids(engine, "s", VEG)[0] == "storing-vegetables.md"
    assert drop_collection(engine, "s") == ["s@v2"]
    with pytest.raises(NotFoundError):
        search(engine, "s", SearchRequest(VEG))


def test_writes_and_syncs_go_to_the_active_version(engine: Engine,
                                                   docs: list[Document]) -> None:
    index_documents(engine, "s", docs)
    reindex(engine, "s", chunker={"max_tokens": 128})
    index_documents(engine, "s", [Document("new", "Pickled beetroot keeps for a year.")])
    delete_documents(engine, "s", ["storing-vegetables.md"])
    assert "new" in engine.store.all_doc_ids("s@v2")
    assert "storing-vegetables.md" not in engine.store.all_doc_ids("s@v2")
    assert "storing-vegetables.md" in engine.store.all_doc_ids("s")  # v1 kept as it was
    # Run history is kept under the name users know; the build under its version.
    assert [r["documents"] for r in (x["stats"] for x in engine.store.list_runs("s"))] == \
        [1, len(SHORT) + 12]
    assert len(engine.store.list_runs("s@v2")) == 1


def test_a_new_version_with_unchanged_settings_passes_a_zero_tolerance_gate(
        engine: Engine, docs: list[Document], tmp_path: Path) -> None:
    index_documents(engine, "s", docs)
    data = _mini_beir(tmp_path, docs)
    report = reindex(engine, "s", gate=data, tolerance=0.0)
    assert report.plan.same_identity and report.build.embedded == 0
    assert report.gate is not None and report.gate.passed and report.swapped
    assert set(report.gate.modes) == {"hybrid", "dense", "keyword"}
    assert all(r["delta"] == 0 for r in report.gate.modes.values())


def test_a_failed_gate_keeps_the_old_version_serving(engine: Engine, docs: list[Document],
                                                     tmp_path: Path) -> None:
    index_documents(engine, "s", docs)
    data = _mini_beir(tmp_path, docs)
    # A model that knows nothing (vectors seeded by each text's hash, identical on every CPU)
    # ranks by chance: dense nDCG@10 falls far below the real model's, everywhere. A smaller
    # change, such as 16-token chunks, moved nDCG by a few hundredths either way by CPU.
    noise = CachedEmbedder(NoiseEmbedder(engine.embedder.tokenizer),
                           engine.embedder.cache)
    report = reindex(engine, "s", embedder=noise, gate=data, tolerance=0.1,
                     gate_modes=[Mode.DENSE])
    assert report.gate is not None and not report.gate.passed and not report.swapped
    dense = report.gate.modes["dense"]
    assert dense["old_ndcg@10"] > 0.75 and dense["delta"] < -0.1, dense
    assert "gate failed" in report.message and "s@v2 is kept" in report.message
    assert engine.resolve("s") == "s"
    assert engine.store.get_collection("s@v2").identity.model == "noise"
    assert _ids(engine, "s", VEG)[0] == "storing-vegetables.md"  # still the old version
    # A gate that cannot run fails before anything is built.
    with pytest.raises(InputError):
        reindex(engine, "s", gate=tmp_path, tolerance=0.0)
    assert [v.name for v in versions(engine, "s")] == ["s", "s@v2"]


def _mini_beir(root: Path, docs: list[Document]) -> Path:
    """Labelled queries over the sample corpus: each query's answer is one document."""
    folder = root / "mini"
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    pairs = [(f"q{i}", d.title, d.id) for i, d in enumerate(docs)]
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, text, _ in pairs:
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, _, d in pairs),
        encoding="utf-8")
    return folder


@pytest.mark.embedded_only(reason="counts hnswlib tombstones; PostgreSQL keeps none")
def test_compaction_frees_deleted_vectors_and_keeps_results(
        settings: Settings, docs: list[Document], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEARCH_ANN_THRESHOLD", "4")  # a graph even for the sample
    engine = open_engine(Settings())
    try:
        index_documents(engine, "s", docs)
        gone = [d.id for d in docs[:6]]
        delete_documents(engine, "s", gone)
        row = next(r.to_dict() for r in describe_collections(engine) if r.name == "s")
        assert row["vectors_deleted"] > 0
        assert row["vectors_live"] == row["chunks"]
        before = _answers(engine, "s")
        report = compact_collection(engine, "s")
        assert report.vectors_deleted_before == row["vectors_deleted"]
        assert report.vectors_deleted_after == 0
        assert report.bytes_freed > 0
        assert report.bytes_after["vectors"] < report.bytes_before["vectors"]
        assert _answers(engine, "s") == before
    finally:
        engine.close()
    engine = open_engine(Settings())  # and after a restart, from the saved files
    try:
        row = next(r.to_dict() for r in describe_collections(engine) if r.name == "s")
        assert row["vectors_deleted"] == 0 and row["vectors_live"] == row["chunks"]
        assert _answers(engine, "s") == before
    finally:
        engine.close()


L3 = "paraphrase-MiniLM-L3-v2"


def test_reindex_to_the_second_model_and_serve_it_without_reconfiguring(
        engine: Engine, settings: Settings, docs: list[Document],
        monkeypatch: pytest.MonkeyPatch) -> None:
    index_documents(engine, "s", docs)
    plan = plan_reindex(engine, "s", L3)
    assert plan.identity["model"] == "sentence-transformers/paraphrase-MiniLM-L3-v2"
    assert plan.chunker["max_tokens"] == 128  # fits the model's window
    assert plan.cached_chunks == 0 and plan.tokens_to_embed == plan.tokens > 0
    report = reindex(engine, "s", model=L3)
    assert report.swapped and report.build.embedded == plan.chunks
    info = engine.store.get_collection("s@v2")
    assert info.identity.model.endswith(L3) and info.identity.dimension == 384
    assert _ids(engine, "s", VEG)[0] == "storing-vegetables.md"

    # Another process with default settings serves the new version with its model...
    fresh = open_engine(Settings())
    try:
        assert _ids(fresh, "s", VEG)[0] == "storing-vegetables.md"
        rollback(fresh, "s")
        assert search(fresh, "s", SearchRequest(VEG)).version == "s"
    finally:
        fresh.close()
    activate(engine, "s", 2)
    # ...but one configured explicitly for the other model refuses, naming both.
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_MODEL", "all-MiniLM-L6-v2")
    pinned = open_engine(Settings())
    try:
        with pytest.raises(IdentityMismatchError, match=r"paraphrase-MiniLM-L3-v2.*"
                           r"all-MiniLM-L6-v2.*semsearch reindex -c s --model"):
            search(pinned, "s", SearchRequest(VEG))
        with pytest.raises(IdentityMismatchError):
            index_documents(pinned, "s", SHORT[:1])
    finally:
        pinned.close()
    assert engine.store.get_collection("s@v2").documents == len(docs)


def test_a_new_collection_fits_its_chunks_to_the_models_window(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_MODEL", L3)
    engine = open_engine(Settings())
    try:
        index_documents(engine, "l3", list(iter_documents(sample_dir())))
        info = engine.store.get_collection("l3")
        assert info.chunker["max_tokens"] == 128 and info.identity.max_tokens == 128
        assert _ids(engine, "l3", VEG)[0] == "storing-vegetables.md"
    finally:
        engine.close()

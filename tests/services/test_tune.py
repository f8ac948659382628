"""``services.tune`` on a real index and the real model: tuning finds a setting at least as
good as the defaults on train (here strictly better: the data is made so), stores it as a
revision, searches use it, revert restores; defaults follow the collection name across a
re-index; another process sees a new revision within the cache's TTL; bad input is
refused with a message."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from semsearch.config import Settings
from semsearch.errors import InputError, NotFoundError, SemsearchError
from semsearch.runtime.engine import Engine
from semsearch.services import tune as svc
from semsearch.services.ingest import index_path
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine
from tests.tune_corpus import write_corpus


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "codes")


@pytest.fixture
def codes(engine: Engine, labelled: Path) -> Path:
    index_path(engine, "codes", labelled)
    return labelled


def _ids(engine: Engine, req: SearchRequest) -> list[str]:
    return [h.doc_id for h in search(engine, "codes", req).hits]


def test_untuned_collections_use_the_settings(engine: Engine, codes: Path) -> None:
    d = svc.search_defaults(engine, "codes")
    assert d == svc.builtin_defaults(engine)
    assert (d.fusion, d.rrf_k, d.candidates, d.weights, d.title_weight, d.revision) == (
        "rrf", engine.settings.rrf_k, engine.settings.candidates, None, None, 0)
    assert svc.defaults_history(engine, "codes").revisions == []


def test_tune_beats_the_defaults_stores_the_winner_and_revert_restores(
        engine: Engine, codes: Path) -> None:
    seen: list[float] = []
    report = svc.tune(engine, "codes", codes, on_trial=lambda t, best: seen.append(t.score))
    assert report.queries == 8 and report.split == "train"
    assert len(seen) == len(report.trials) >= 10
    assert report.best.score >= report.baseline.score
    assert report.best.score > report.baseline.score  # this corpus is made for it
    assert report.best.defaults.title_weight not in (None, 1.0)  # the title matters here
    assert report.stored is not None and report.stored.revision == 1
    assert report.stored.note["ndcg@10"] == pytest.approx(report.best.score, abs=1e-6)

    live = svc.search_defaults(engine, "codes")
    assert live.revision == 1
    assert live.settings() == report.best.defaults.settings()
    # a search that sets nothing now searches with the winner
    d = report.best.defaults
    explicit = SearchRequest("ZK4434 procedure", fusion=d.fusion, rrf_k=d.rrf_k,
                             candidates=d.candidates, weights=d.weights,
                             title_weight=d.title_weight)
    assert _ids(engine, SearchRequest("ZK4434 procedure")) == _ids(engine, explicit)

    undone, now = svc.revert_defaults(engine, "codes")
    assert undone.revision == 1 and now == svc.builtin_defaults(engine)
    assert svc.search_defaults(engine, "codes").revision == 0
    with pytest.raises(InputError, match="no tuned search defaults to revert"):
        svc.revert_defaults(engine, "codes")
    (rev,) = svc.defaults_history(engine, "codes").revisions
    assert rev.revision == 1 and rev.reverted_at is not None


def test_a_tuning_that_finds_nothing_better_stores_nothing(engine: Engine,
                                                           codes: Path) -> None:
    first = svc.tune(engine, "codes", codes)
    assert first.stored is not None
    again = svc.tune(engine, "codes", codes, passes=1)  # starts from the tuned defaults
    assert again.baseline.score == pytest.approx(first.best.score)
    assert again.stored is None or again.best.score > again.baseline.score
    dry = svc.tune(engine, "codes", codes, store=False, max_queries=3)
    assert dry.stored is None and dry.queries == 3


def test_revisions_stack_and_revert_walks_back(engine: Engine, codes: Path) -> None:
    r1 = svc.store_defaults(engine, "codes", {"rrf_k": 10})
    r2 = svc.store_defaults(engine, "codes", {"fusion": "minmax", "title_weight": 2.0})
    assert (r1.revision, r2.revision) == (1, 2)
    assert svc.search_defaults(engine, "codes").fusion == "minmax"
    assert svc.revert_defaults(engine, "codes")[1].rrf_k == 10
    r3 = svc.store_defaults(engine, "codes", {"candidates": 50})
    assert r3.revision == 3  # numbers are never reused
    assert svc.search_defaults(engine, "codes").candidates == 50
    assert svc.revert_defaults(engine, "codes")[1].revision == 1
    assert svc.revert_defaults(engine, "codes")[1].revision == 0
    history = svc.defaults_history(engine, "codes").to_dict()
    assert [r["revision"] for r in history["history"]] == [1, 2, 3]
    assert not any(r["live"] for r in history["history"])


def test_defaults_follow_the_name_across_a_reindex(engine: Engine, codes: Path) -> None:
    from semsearch.services.versions import reindex

    svc.store_defaults(engine, "codes", {"title_weight": 3.0, "fusion": "zscore"})
    report = reindex(engine, "codes", chunker={"max_tokens": 64})
    assert report.version == "codes@v2"
    assert engine.resolve("codes") == "codes@v2"
    assert svc.search_defaults(engine, "codes").title_weight == 3.0
    handle = engine.collection("codes@v2")  # the version by its own name: the same defaults
    assert svc.search_defaults(engine, handle).fusion == "zscore"
    assert svc.collection_key("codes@v2") == "codes"


def test_another_process_sees_a_new_revision_within_the_ttl(
        engine: Engine, codes: Path, settings: Settings,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(svc, "DEFAULTS_TTL", 0.3)
    other = open_engine(settings)  # a second engine on the same home: another process
    try:
        assert svc.search_defaults(other, "codes").revision == 0
        svc.store_defaults(engine, "codes", {"rrf_k": 7})
        assert svc.search_defaults(engine, "codes").rrf_k == 7  # this process: at once
        time.sleep(0.35)
        assert svc.search_defaults(other, "codes").rrf_k == 7
    finally:
        other.close()


@pytest.mark.parametrize(("values", "message"), [
    ({"fusion": "borda"}, "fusion must be one of"),
    ({"rrf_k": 0}, "rrf_k must be an integer >= 1"),
    ({"candidates": 5000}, "candidates must be an integer"),
    ({"weights": {"dense": -1}}, "weights must be >= 0"),
    ({"weights": {"sparse": 1}}, "weights must map dense and keyword"),
    ({"title_weight": 0}, "title_weight must be above 0"),
    ({"title_weight": float("nan")}, "finite number"),
    ({"k1": 1.2}, "unknown search default"),
])
def test_bad_defaults_are_refused(engine: Engine, codes: Path, values: dict[str, object],
                                  message: str) -> None:
    with pytest.raises(InputError, match=message):
        svc.store_defaults(engine, "codes", values)
    assert svc.defaults_history(engine, "codes").revisions == []


def test_bad_tuning_input_is_refused_clearly(engine: Engine, codes: Path,
                                            tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="unknown collection 'nope'"):
        svc.tune(engine, "nope", codes)
    with pytest.raises(NotFoundError):
        svc.search_defaults(engine, "nope")
    test_only = write_corpus(tmp_path / "test-only", splits=("test",))
    with pytest.raises(SemsearchError, match=r"missing qrels file for split 'train' "
                                             r"\(available splits: test\)"):
        svc.tune(engine, "codes", test_only)
    no_qrels = tmp_path / "no-qrels"
    no_qrels.mkdir()
    (no_qrels / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    with pytest.raises(SemsearchError, match="missing qrels file"):
        svc.tune(engine, "codes", no_qrels)
    with pytest.raises(InputError, match="not a folder"):
        svc.tune(engine, "codes", tmp_path / "absent")
    with pytest.raises(InputError, match="passes"):
        svc.tune(engine, "codes", codes, passes=0)
    assert svc.defaults_history(engine, "codes").revisions == []


def test_a_dropped_name_leaves_no_defaults_to_a_new_collection(engine: Engine, codes: Path,
                                                               labelled: Path) -> None:
    from semsearch.services.collections import drop_collection

    svc.store_defaults(engine, "codes", {"rrf_k": 10})
    svc.store_defaults(engine, "codes", {"fusion": "minmax"})
    drop_collection(engine, "codes")
    index_path(engine, "codes", labelled)  # other documents may come under the old name
    assert svc.search_defaults(engine, "codes") == svc.builtin_defaults(engine)
    history = svc.defaults_history(engine, "codes").to_dict()["history"]
    assert [r["revision"] for r in history] == [1, 2]  # kept, as an audit trail
    assert all(r["reverted_at"] for r in history)

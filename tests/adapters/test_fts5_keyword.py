"""Fts5KeywordIndex: upsert/remove/filter semantics, persistence, hostile queries, BM25 oracle."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex, match_expression
from semsearch.core.analysis import ENGLISH_STOP_WORDS, Analyzer
from semsearch.errors import BackendError, StorageFullError
from tests import full_disk

DOCS = [
    (1, "The quick brown fox jumps over the lazy dog."),
    (2, "Foxes are running through the forest near the river."),
    (3, "A dog barks at night; dogs bark loudly."),
    (4, "Solar panels convert sunlight into electricity."),
    (5, "Brewing coffee: grind beans, then pour hot water."),
]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Fts5KeywordIndex]:
    idx = Fts5KeywordIndex(tmp_path / "kw.db")
    idx.add(DOCS)
    yield idx
    idx.close()


def labels(hits: list[tuple[int, float]]) -> list[int]:
    return [label for label, _ in hits]


def test_analyzer_lowercases_drops_stop_words_and_stems() -> None:
    a = Analyzer()
    assert a.terms("The Foxes were RUNNING, café-naïve 2024!") == ["fox", "run", "café", "naïv",
                                                                  "2024"]
    assert a.terms("the and of") == []
    assert Analyzer(frozenset(), stem=False).terms("The Foxes") == ["the", "foxes"]
    assert 140 <= len(ENGLISH_STOP_WORDS) <= 200


HOSTILE = ['"', '""', '"unterminated fox', "fox AND", "AND", "OR", "NOT", "NOT fox", "fox OR",
           "NEAR", "NEAR(fox dog)", "NEAR(fox dog, 2)", "*", "fox*", "-fox", "fox - dog",
           "body:fox", "terms:fox", "{body}: fox", "^fox", "(", ")", "(fox", "fox)", "'", "fox's",
           "a:b:c", "+fox", "fox\x00dog", "\\", "%_", "🦊 fox", "ﬁnd", "İstanbul", "fox" * 500]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_do_not_raise(index: Fts5KeywordIndex, query: str) -> None:
    hits = index.search(query, 5)
    assert isinstance(hits, list)
    if "fox" in query.lower() and len(query) < 100:
        assert 1 in labels(hits) or 2 in labels(hits)
    index.search(query, 5, allowed={1, 2})


def test_operator_words_are_matched_literally(tmp_path: Path) -> None:
    idx = Fts5KeywordIndex(tmp_path / "kw.db")
    idx.add([(1, "the houses are near the station"), (2, "station closed")])
    assert labels(idx.search("NEAR", 5)) == [1]
    assert labels(idx.search("near OR station", 5))[0] == 1
    idx.close()


@pytest.mark.parametrize("query", ["", "   ", "the of and", "!!! ... ---", '"" ** ()'])
def test_queries_without_usable_terms_return_nothing(index: Fts5KeywordIndex,
                                                     query: str) -> None:
    assert index.search(query, 10) == []


def test_match_expression_quotes_and_dedupes() -> None:
    assert match_expression(["a", "b", "a", 'x"y']) == '"a" OR "b" OR "x""y"'
    assert match_expression([]) == ""


def test_concurrent_searches(index: Fts5KeywordIndex) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                assert labels(index.search("dog", 5))[0] == 3
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_writes_sqlite_threw_away_on_a_full_database_are_never_saved(tmp_path: Path) -> None:
    """SQLite rolls the whole pending transaction back on SQLITE_FULL: the index must not
    go on to save a state missing those writes under a newer generation."""
    idx = Fts5KeywordIndex(tmp_path / "kw.db")
    idx.add(DOCS)
    idx.save(1)
    idx.add([(9, "zebras graze on the savanna")])  # pending, then lost
    pages = idx._db.execute("PRAGMA page_count").fetchone()[0]
    idx._db.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own SQLITE_FULL
    with pytest.raises(StorageFullError, match=r"keyword index .*kw\.db: database or disk"):
        idx.add([(i, f"word{i} " * 50) for i in range(10, 2000)])
    assert idx.generation == -1  # unknown: whoever opens it next rebuilds
    assert sorted(labels(idx.search("fox", 5))) == [1, 2]  # what the file holds
    for write in (lambda: idx.add([(9, "zebra")]), lambda: idx.save(2)):
        with pytest.raises(BackendError, match="lost its unsaved writes"):
            write()
    idx._db.execute("PRAGMA max_page_count=1073741823")
    idx.clear()  # a rebuild starts here, and needs nothing that was lost
    idx.add([*DOCS, (9, "zebras graze on the savanna")])
    idx.save(2)
    idx.close()
    again = Fts5KeywordIndex(tmp_path / "kw.db")
    assert again.generation == 2 and labels(again.search("zebra", 5)) == [9]
    again.close()


def test_on_a_full_disk_it_searches_and_keeps_changes_in_memory_until_saved(
        tmp_path: Path) -> None:
    if reason := full_disk.unavailable(tmp_path):
        pytest.skip(f"no private tmpfs to fill: {reason}")
    code = f"""
from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex
from semsearch.errors import StorageFullError
first = Fts5KeywordIndex(mnt / "kw.db")
first.add({DOCS!r})
first.save(1)
first.close()
fill()
idx = Fts5KeywordIndex(mnt / "kw.db")
result["generation"] = idx.generation
result["fox"] = [label for label, _ in idx.search("fox", 5)]
idx.add([(9, "zebras graze on the savanna")])
idx.remove([1])
result["zebra"] = [label for label, _ in idx.search("zebra", 5)]
try:
    idx.save(2)
except StorageFullError as exc:
    result["save"] = str(exc)
result["generation_after_failed_save"] = idx.generation
result["fox_after_failed_save"] = [label for label, _ in idx.search("fox", 5)]
try:
    idx.compact()
except Exception as exc:
    result["compact"] = str(exc)
free()
idx.save(2)
result["generation_saved"] = idx.generation
idx.close()
again = Fts5KeywordIndex(mnt / "kw.db")
result["reopened"] = [again.generation, [label for label, _ in again.search("zebra fox", 5)]]
"""
    (out,) = full_disk.run(tmp_path / "mnt", [{"py": code}], size="1m")
    assert "error" not in out, out["error"]
    r = out["result"]
    assert r["generation"] == 1 and sorted(r["fox"]) == [1, 2]
    assert r["zebra"] == [9]
    assert r["save"].startswith(f"cannot write the keyword index {tmp_path / 'mnt' / 'kw.db'}: ")
    assert "full" in r["save"]
    assert r["generation_after_failed_save"] == 1  # the file still holds generation 1
    assert r["fox_after_failed_save"] == [2]  # searches see the changes all the same
    assert "unsaved writes" in r["compact"]
    assert r["generation_saved"] == 2
    assert r["reopened"][0] == 2 and sorted(r["reopened"][1]) == [2, 9]

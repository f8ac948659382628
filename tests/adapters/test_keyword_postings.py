"""The FTS5 keyword index's in-memory postings (``adapters.keyword.postings``): the same
hits and the same scores, bit for bit, as FTS5's own ``bm25()``; rebuilt after any change,
this index's own (pending ones included) or another connection's; never in the way of a
close. The whole ``KeywordIndex`` contract also runs against it (imported below, with a
factory that builds the postings inside the first search)."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex
from semsearch.adapters.keyword.postings import Unicode61
from semsearch.errors import BackendError
from tests.contract import test_keyword_index as contract
from tests.contract.test_keyword_index import (  # noqa: F401  (the contract, re-collected)
    Factory,
    Place,
    index,
    make,
    test_a_title_weight_lifts_documents_whose_title_matches,
    test_add_replaces_and_the_last_text_wins,
    test_allowed_restricts_results_and_fills_k,
    test_any_query_text_is_words_never_syntax,
    test_clear_empties_and_forgets_the_generation,
    test_compact_keeps_results,
    test_empty_index_and_empty_queries,
    test_real_text_filtered_search_is_the_filtered_ranking,
    test_remove_deletes_and_ignores_unknown_labels,
    test_save_reopen_keeps_contents_and_generation,
    test_scores_and_ranking_agree_with_rank_bm25,
    test_search_finds_stemmed_terms_best_first,
    test_title_weighted_scores_are_bm25f,
    test_unweighted_title_and_text_rank_as_one_text,
)

SYNC = Factory(lambda at: Fts5KeywordIndex(at.path / "keyword.db", memory="sync"))


@pytest.fixture
def factory() -> Factory:
    return SYNC


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory
         ) -> Iterator[tuple[Fts5KeywordIndex, list[str], list[str]]]:
    if not (contract.SCIFACT / "corpus.jsonl").exists():
        pytest.fail(f"these tests need the SciFact corpus at {contract.SCIFACT}",
                    pytrace=False)
    docs, queries = contract._scifact()
    idx = Fts5KeywordIndex(tmp_path_factory.mktemp("kw-mem") / "keyword.db", memory="sync")
    for start in range(0, len(docs), 500):
        idx.add(list(enumerate(docs))[start:start + 500])
    idx.save(1)
    yield idx, docs, queries
    idx.close()


def _titled_scifact(n: int = 1500) -> tuple[list[tuple[int, str, str]], list[str]]:
    with (contract.SCIFACT / "corpus.jsonl").open(encoding="utf-8") as fh:
        rows = [json.loads(line) for _, line in zip(range(n), fh, strict=False)]
    _, queries = contract._scifact()
    return [(i + 1, r["text"], r.get("title", "")) for i, r in enumerate(rows)], queries


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Fts5KeywordIndex, Fts5KeywordIndex, list[str]]]:
    """One file, opened twice: searched from memory, and by FTS5 alone."""
    items, queries = _titled_scifact()
    path = tmp_path_factory.mktemp("twins") / "keyword.db"
    writer = Fts5KeywordIndex(path, memory="off")
    writer.add(items)
    writer.add([(5000, "Café naïve résumé of the CAFE", "Über façade")])
    writer.save(1)
    memory = Fts5KeywordIndex(path, memory="sync")
    yield memory, writer, queries
    memory.close()
    writer.close()


@pytest.mark.parametrize("title_weight", [None, 1.0, 2.0, 1.3, 0.5])
def test_the_same_hits_and_scores_as_fts5_bit_for_bit(
        twins: tuple[Fts5KeywordIndex, Fts5KeywordIndex, list[str]],
        title_weight: float | None) -> None:
    memory, fts5, queries = twins
    allowed = set(random.Random(5).sample(range(1, 1501), 200))
    for query in queries:
        for k, only in ((10, None), (200, None), (10, allowed)):
            assert memory.search(query, k, only, title_weight) == \
                fts5.search(query, k, only, title_weight), (query, k, only is not None)
    assert memory._postings is not None  # answered from memory, not by FTS5


def test_diacritics_fold_as_fts5_folds_them(
        twins: tuple[Fts5KeywordIndex, Fts5KeywordIndex, list[str]]) -> None:
    memory, fts5, _ = twins
    for query in ("cafe", "café", "naive", "uber facade", "resume cafe", "façade"):
        hits = memory.search(query, 5, title_weight=2.0)
        assert 5000 in [lb for lb, _ in hits], query
        assert hits == fts5.search(query, 5, title_weight=2.0)
    tokens = Unicode61().tokens(["café", "naïv", "fox"])
    assert tokens == {"café": ("cafe",), "naïv": ("naiv",), "fox": ("fox",)}


def test_pending_and_other_connections_writes_are_seen(tmp_path: Path) -> None:
    path = tmp_path / "keyword.db"
    idx = Fts5KeywordIndex(path, memory="sync")
    idx.add(contract.DOCS)
    assert [lb for lb, _ in idx.search("dog barking", 5)] == [3, 1]
    idx.add([(7, "a dog, a dog, a dog")])  # pending, not saved: seen all the same
    assert idx.search("dog", 5)[0][0] == 7
    idx.save(1)
    assert idx.search("dog", 5)[0][0] == 7
    other = Fts5KeywordIndex(path, memory="off")
    other.remove([7])
    other.add([(8, "zebra")])
    other.save(2)
    hits = idx.search("dog zebra", 5)
    assert sorted(lb for lb, _ in hits) == [1, 3, 8]
    assert hits == other.search("dog zebra", 5)
    assert idx.generation == 2
    other.close()
    idx.close()


def test_a_failed_write_step_leaves_no_stale_postings(tmp_path: Path) -> None:
    idx = Fts5KeywordIndex(tmp_path / "keyword.db", memory="sync")
    idx.add(contract.DOCS)
    idx.save(1)
    assert idx.search("fox", 5)
    with pytest.raises(ZeroDivisionError), idx._write() as db:
        db.execute("DELETE FROM terms")
        raise ZeroDivisionError  # the step rolls back: the rows are there again
    assert sorted(lb for lb, _ in idx.search("fox", 5)) == [1, 2]
    idx.close()


def test_background_build_takes_over_and_close_does_not_wait_for_it(tmp_path: Path) -> None:
    items, queries = _titled_scifact(800)
    path = tmp_path / "keyword.db"
    idx = Fts5KeywordIndex(path)
    idx.add(items)
    idx.save(1)
    want = [idx.search(q, 10) for q in queries[:20]]  # FTS5 answers while it builds
    deadline = time.monotonic() + 30
    while idx._postings is None and time.monotonic() < deadline:
        idx.search("warm", 1)
        time.sleep(0.05)
    assert idx._postings is not None
    assert [idx.search(q, 10) for q in queries[:20]] == want
    idx.close()
    again = Fts5KeywordIndex(path)
    again.search("fox", 1)  # starts a build ...
    started = time.monotonic()
    again.close()  # ... that the close cancels
    assert time.monotonic() - started < 5
    with pytest.raises(BackendError, match="closed"):
        again.search("fox", 1)


def test_collections_over_the_row_limit_stay_with_fts5(tmp_path: Path) -> None:
    idx = Fts5KeywordIndex(tmp_path / "keyword.db", memory="sync", memory_max_rows=3)
    idx.add(contract.DOCS)
    assert [lb for lb, _ in idx.search("dog barking", 5)] == [3, 1]
    assert idx._postings is None
    idx.remove([4, 5])
    assert [lb for lb, _ in idx.search("dog barking", 5)] == [3, 1]
    assert idx._postings is not None
    idx.close()


def test_bad_memory_option_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="memory"):
        Fts5KeywordIndex(tmp_path / "keyword.db", memory="always")

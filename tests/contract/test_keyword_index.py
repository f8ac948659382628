"""The ``KeywordIndex`` contract. The oracle is rank_bm25's Okapi BM25 (k1=1.2, b=0.75) over
the same analyzer's terms, on 2,000 real SciFact passages and the 300 SciFact claims: every
hit must carry the oracle's score, in the oracle's order, and the top 10 must be the oracle's
top 10 (ties aside).

A backend is a factory ``(place) -> KeywordIndex``; called again with the same place (a
folder, or a name in a database) it must reopen what was saved there. Add a backend by adding
a ``pytest.param``."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rank_bm25  # type: ignore[import-untyped]

from semsearch.adapters.keyword.fts5 import Fts5KeywordIndex
from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.keyword import PgKeywordIndex
from semsearch.core.analysis import Analyzer
from semsearch.ports import KeywordIndex
from tests.conftest import DATA

Hits = list[tuple[int, float]]


@dataclass(frozen=True)
class Place:
    """Where an index lives: a folder, and for a database backend the database (the folder
    then only names the index)."""

    path: Path
    db: Database | None = None

    @property
    def database(self) -> Database:
        assert self.db is not None
        return self.db


@dataclass(frozen=True)
class Factory:
    open: Callable[[Place], KeywordIndex]
    in_postgres: bool = False

    def __call__(self, place: Place) -> KeywordIndex:
        return self.open(place)


BACKENDS = [
    pytest.param(Factory(lambda at: Fts5KeywordIndex(at.path / "keyword.db")), id="fts5"),
    pytest.param(Factory(lambda at: PgKeywordIndex(at.database, str(at.path)), in_postgres=True),
                 id="postgres", marks=pytest.mark.postgres),
]

SCIFACT = DATA / "scifact"
N_DOCS = 2000

DOCS = [
    (1, "The quick brown fox jumps over the lazy dog."),
    (2, "Foxes are running through the forest near the river."),
    (3, "A dog barks at night; dogs bark loudly."),
    (4, "Solar panels convert sunlight into electricity."),
    (5, "Brewing coffee: grind beans, then pour hot water."),
]


def labels_of(hits: Hits) -> list[int]:
    return [label for label, _ in hits]


def assert_ranked(hits: Hits) -> None:
    scores = [s for _, s in hits]
    assert all(s > 0 for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert len(set(labels_of(hits))) == len(hits), "a label returned twice"


@pytest.fixture(params=BACKENDS)
def factory(request: pytest.FixtureRequest) -> Factory:
    f: Factory = request.param
    return f


@pytest.fixture
def make(factory: Factory, tmp_path: Path,
         request: pytest.FixtureRequest) -> Iterator[Callable[..., KeywordIndex]]:
    opened: list[KeywordIndex] = []
    db = Database(request.getfixturevalue("postgres_url")) if factory.in_postgres else None

    def open_index(name: str = "kw") -> KeywordIndex:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        opened.append(factory(Place(folder, db)))
        return opened[-1]

    yield open_index
    for index in opened:
        index.close()
    if db is not None:
        db.close()


@pytest.fixture
def index(make: Callable[..., KeywordIndex]) -> KeywordIndex:
    idx = make()
    idx.add(DOCS)
    return idx


# -- semantics ---------------------------------------------------------------------------------

def test_empty_index_and_empty_queries(make: Callable[..., KeywordIndex]) -> None:
    idx = make()
    assert len(idx) == 0 and idx.generation == -1
    assert idx.search("fox", 10) == []
    idx.add(DOCS)
    for query in ("", "   ", "the and of", "!!!"):  # nothing left after analysis
        assert idx.search(query, 10) == []
    assert idx.search("fox", 0) == []


def test_search_finds_stemmed_terms_best_first(index: KeywordIndex) -> None:
    hits = index.search("dog barking", 10)
    assert labels_of(hits)[0] == 3
    assert set(labels_of(hits)) == {1, 3}
    assert_ranked(hits)
    assert len(index.search("dog fox", 1)) == 1
    assert len(index) == 5


@pytest.mark.parametrize("query", [
    'fox AND dog', 'fox OR', 'NEAR(fox dog)', '"unbalanced', "fox*", "-fox", "^fox",
    "body:fox", "(fox", "fox) OR (", "{fox}", "fox\x00dog", "'; DROP TABLE terms; --",
    "ﬁsh café ÅNGSTRÖM 数据", "x" * 5000])
def test_any_query_text_is_words_never_syntax(index: KeywordIndex, query: str) -> None:
    hits = index.search(query, 10)
    assert_ranked(hits)
    assert set(labels_of(hits)) <= {1, 2, 3, 4, 5}


def test_add_replaces_and_the_last_text_wins(index: KeywordIndex) -> None:
    index.add([(4, "Wind turbines generate power.")])
    assert index.search("solar", 5) == []
    assert labels_of(index.search("turbine", 5)) == [4]
    index.add([(9, "first version apple"), (9, "second version banana")])
    assert labels_of(index.search("banana", 5)) == [9]
    assert index.search("apple", 5) == []
    assert len(index) == 6


def test_remove_deletes_and_ignores_unknown_labels(index: KeywordIndex) -> None:
    index.remove([1, 3, 12345])
    assert index.search("dog", 5) == []
    assert labels_of(index.search("fox", 5)) == [2]
    assert len(index) == 3
    index.remove([1])
    assert len(index) == 3
    index.add([(1, "a fox again")])
    assert sorted(labels_of(index.search("fox", 5))) == [1, 2]


@pytest.mark.parametrize("n_allowed", [1, 30, 1500])
def test_allowed_restricts_results_and_fills_k(make: Callable[..., KeywordIndex],
                                               n_allowed: int) -> None:
    idx = make()
    rng = random.Random(n_allowed)
    idx.add([(i, "common " * rng.randint(1, 5) + f"filler{i} other words") for i in range(3000)])
    full = idx.search("common", 3000)
    assert len(full) == 3000
    # the worst-ranked labels: a filter applied after a top-k would miss them all
    allowed = set(labels_of(full[-n_allowed:]))
    hits = idx.search("common", 10, allowed=allowed)
    assert len(hits) == min(10, n_allowed)
    assert set(labels_of(hits)) <= allowed
    assert [s for _, s in hits] == pytest.approx(
        [s for lb, s in full if lb in allowed][:10], rel=1e-9)
    assert idx.search("common", 10, allowed=set()) == []
    assert idx.search("common", 10, allowed={-1, 99_999}) == []


def test_save_reopen_keeps_contents_and_generation(make: Callable[..., KeywordIndex]) -> None:
    idx = make()
    idx.add(DOCS)
    idx.remove([5])
    idx.save(7)
    assert idx.generation == 7
    assert idx.disk_bytes() > 0
    queries = ["fox", "dog barking", "solar electricity", "coffee"]
    before = [idx.search(q, 10) for q in queries]
    idx.close()
    again = make()
    assert again.generation == 7 and len(again) == 4
    assert [again.search(q, 10) for q in queries] == before
    again.add([(6, "zebras graze")])
    again.save(8)
    assert again.generation == 8
    assert make("other").generation == -1  # another folder: nothing saved there


def test_clear_empties_and_forgets_the_generation(make: Callable[..., KeywordIndex]) -> None:
    idx = make()
    idx.add(DOCS)
    idx.save(3)
    idx.clear()
    assert len(idx) == 0 and idx.generation == -1
    assert idx.search("fox", 5) == []
    idx.add([(10, "a rebuilt fox")])
    idx.save(4)
    idx.close()
    again = make()
    assert again.generation == 4
    assert labels_of(again.search("fox", 5)) == [10]


def test_compact_keeps_results(make: Callable[..., KeywordIndex]) -> None:
    idx = make()
    rng = random.Random(3)
    words = [f"w{i}" for i in range(200)]
    idx.add([(i, " ".join(rng.choices(words, k=20))) for i in range(1000)])
    idx.save(1)
    idx.remove(range(0, 1000, 2))
    idx.add([(i, " ".join(rng.choices(words, k=20))) for i in range(1000, 1100)])
    idx.save(2)
    queries = [" ".join(rng.choices(words, k=3)) for _ in range(20)]
    before = [idx.search(q, 10) for q in queries]
    idx.compact()
    assert idx.generation == 2 and len(idx) == 600
    assert [idx.search(q, 10) for q in queries] == before


# -- the title field ---------------------------------------------------------------------------

TITLED = [
    (1, "Foxes in the body: a fox, another fox, foxes everywhere.", "Forest animals"),
    (2, "A short note on animals of the forest.", "The fox"),
    (3, "Solar panels convert sunlight into electricity.", "Energy"),
    (4, "Grind beans, then pour hot water.", ""),
]


def test_unweighted_title_and_text_rank_as_one_text(make: Callable[..., KeywordIndex]) -> None:
    titled, joined = make("titled"), make("joined")
    titled.add(TITLED)
    joined.add([(label, f"{title}\n{text}") for label, text, title in TITLED])
    for query in ("fox", "forest animals", "energy sunlight", "beans", "the fox forest"):
        want = joined.search(query, 10)
        assert titled.search(query, 10) == want
        assert titled.search(query, 10, title_weight=1.0) == want
        assert titled.search(query, 10, title_weight=None) == want


def test_a_title_weight_lifts_documents_whose_title_matches(
        make: Callable[..., KeywordIndex]) -> None:
    idx = make()
    idx.add(TITLED)
    assert labels_of(idx.search("fox", 10)) == [1, 2]  # the body says fox four times
    lifted = idx.search("fox", 10, title_weight=5.0)
    assert labels_of(lifted) == [2, 1]
    assert_ranked(lifted)
    plain = dict(idx.search("fox", 10))
    assert dict(lifted)[2] > plain[2] and dict(lifted)[1] == pytest.approx(plain[1])
    # weighted search keeps filters and k
    assert labels_of(idx.search("fox", 10, allowed={1}, title_weight=5.0)) == [1]
    assert len(idx.search("fox forest", 1, title_weight=3.0)) == 1
    # a weight below 1 does the opposite: the title counts for less
    assert dict(idx.search("forest", 10, title_weight=0.5))[1] < \
        dict(idx.search("forest", 10))[1]


def test_title_weighted_scores_are_bm25f(make: Callable[..., KeywordIndex]) -> None:
    """The oracle: BM25 with tf = tf_text + w x tf_title, lengths unweighted (FTS5's
    bm25() column weights), the idf floored as everywhere."""
    idx = make()
    idx.add(TITLED)
    analyzer = Analyzer()
    body = {label: analyzer.terms(text) for label, text, _ in TITLED}
    title = {label: analyzer.terms(t) for label, _, t in TITLED}
    n = len(TITLED)
    avgdl = sum(len(body[x]) + len(title[x]) for x in body) / n
    w = 3.0
    for query in ("fox", "forest animals", "fox energy"):
        terms = list(dict.fromkeys(analyzer.terms(query)))
        want: dict[int, float] = {}
        for label in body:
            dl = len(body[label]) + len(title[label])
            score = 0.0
            for t in terms:
                df = sum(1 for x in body if t in body[x] or t in title[x])
                if not df:
                    continue
                idf = float(np.log((n - df + 0.5) / (df + 0.5)))
                idf = idf if idf > 0 else 1e-6
                tf = body[label].count(t) + w * title[label].count(t)
                score += idf * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * dl / avgdl))
            if score > 0:
                want[label] = score
        got = dict(idx.search(query, 10, title_weight=w))
        assert set(got) == set(want), query
        for label, score in want.items():
            assert got[label] == pytest.approx(score, rel=1e-9), (query, label)


# -- BM25 oracle on real text ------------------------------------------------------------------

def _scifact() -> tuple[list[str], list[str]]:
    with (SCIFACT / "corpus.jsonl").open(encoding="utf-8") as fh:
        docs = [json.loads(line) for _, line in zip(range(N_DOCS), fh, strict=False)]
    with (SCIFACT / "queries.jsonl").open(encoding="utf-8") as fh:
        queries = [json.loads(line)["text"] for line in fh if line.strip()]
    return [f"{d.get('title', '')}\n{d['text']}" for d in docs], queries


def bm25_oracle(analyzer: Analyzer, docs: list[str]) -> rank_bm25.BM25Okapi:
    """rank_bm25's Okapi BM25 with FTS5's floor for terms in over half the documents:
    FTS5 gives them idf 1e-6, rank_bm25 by default 0.25 x the mean idf."""
    oracle = rank_bm25.BM25Okapi([analyzer.terms(d) for d in docs], k1=1.2, b=0.75, epsilon=0)
    oracle.idf = {w: (v if v > 0 else 1e-6) for w, v in oracle.idf.items()}
    return oracle


@pytest.fixture(scope="module", params=BACKENDS)
def real(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeywordIndex, list[str],
                                                                     list[str]]]:
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.fail(f"the BM25 oracle needs the SciFact corpus at {SCIFACT}", pytrace=False)
    factory: Factory = request.param
    docs, queries = _scifact()
    db, databases = None, None
    if factory.in_postgres:
        from tests.pgserver import database

        databases = database(request.getfixturevalue("postgres_server"))
        db = Database(next(databases))
    idx = factory(Place(tmp_path_factory.mktemp("scifact-kw"), db))
    for start in range(0, len(docs), 500):
        idx.add(list(enumerate(docs))[start:start + 500])
    idx.save(1)
    yield idx, docs, queries
    idx.close()
    if db is not None and databases is not None:
        db.close()
        next(databases, None)


def test_scores_and_ranking_agree_with_rank_bm25(
        real: tuple[KeywordIndex, list[str], list[str]]) -> None:
    idx, docs, queries = real
    assert len(idx) == N_DOCS
    analyzer = Analyzer()
    oracle = bm25_oracle(analyzer, docs)
    compared = 0
    for query in queries:
        hits = idx.search(query, 10)
        scores = np.asarray(oracle.get_scores(list(dict.fromkeys(analyzer.terms(query)))))
        matching = int((scores > 0).sum())
        assert len(hits) == min(10, matching), query
        assert_ranked(hits)
        for label, score in hits:
            assert score == pytest.approx(scores[label], rel=1e-6, abs=1e-9), query
        if hits:  # the oracle's top 10, up to ties at the 10th score
            tenth = np.sort(scores)[::-1][len(hits) - 1]
            assert min(s for _, s in hits) == pytest.approx(tenth, rel=1e-6)
            compared += 1
    assert compared >= 290


def test_real_text_filtered_search_is_the_filtered_ranking(
        real: tuple[KeywordIndex, list[str], list[str]]) -> None:
    idx, docs, queries = real
    rng = random.Random(11)
    allowed = set(rng.sample(range(len(docs)), 300))
    for query in queries[:100]:
        full = idx.search(query, len(docs))
        hits = idx.search(query, 10, allowed=allowed)
        assert set(labels_of(hits)) <= allowed
        want = [(lb, s) for lb, s in full if lb in allowed][:10]
        assert [s for _, s in hits] == pytest.approx([s for _, s in want], rel=1e-9)

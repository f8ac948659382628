"""What is particular to the derived indexes in PostgreSQL (the contract suites cover the
rest): the two filtered-search paths, halfvec's size, the advisory lock, and tables shared
by every process that opens the collection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.postgres.db import Database
from semsearch.adapters.postgres.index_storage import PgIndexStorage
from semsearch.adapters.postgres.keyword import PgKeywordIndex
from semsearch.adapters.postgres.vectors import PgVectorIndex
from semsearch.errors import BackendError
from semsearch.ports import Vectors

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "scifact_minilm_vectors.npz"


@pytest.fixture
def db(postgres_url: str) -> Iterator[Database]:
    database = Database(postgres_url)
    yield database
    database.close()


def unit(rng: np.random.Generator, n: int, dim: int) -> Vectors:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    out: Vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def passages(n: int) -> Vectors:
    v = np.load(FIXTURE, allow_pickle=False)["passages"][:n].astype(np.float32)
    out: Vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def exact_top(vecs: Vectors, labels: list[int], q: Vectors, k: int,
              allowed: set[int]) -> list[int]:
    keep = np.array([x in allowed for x in labels])
    scores = vecs[keep] @ q
    return [int(x) for x in np.asarray(labels)[keep][np.argsort(-scores, kind="stable")[:k]]]


def test_selective_filters_are_exact_and_wide_ones_fill_k_through_the_graph(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    vecs = unit(rng, 8000, 48)
    labels = list(range(8000))
    index = PgVectorIndex(db, "filtered", 48, ef_search=10)
    index.add(labels, vecs)
    index.save(1)
    queries = unit(rng, 20, 48)

    # Selective (<= 2000 labels): scored exactly, never through the graph.
    narrow = set(rng.choice(8000, 300, replace=False).tolist())
    monkeypatch.setattr(index, "_ann", lambda *a: pytest.fail("graph used for a narrow filter"))
    for q in queries:
        hits = index.search(q, 10, allowed=narrow)
        assert [label for label, _ in hits] == exact_top(vecs, labels, q, 10, narrow)
    monkeypatch.undo()

    # Wide (a quarter of the rows): the graph with iterative scans fills k by itself, even
    # with ef_search 10, where one pass of the graph yields ~10 candidates of which a
    # quarter pass the filter.
    wide = set(rng.choice(8000, 2500, replace=False).tolist())
    monkeypatch.setattr(index, "_exact", lambda *a: pytest.fail("fell back to exact"))
    found = 0
    for q in queries:
        hits = index.search(q, 10, allowed=wide)
        assert len(hits) == 10 and {label for label, _ in hits} <= wide
        found += len({label for label, _ in hits} & set(exact_top(vecs, labels, q, 10, wide)))
    assert found / (10 * len(queries)) >= 0.5  # ef_search 10 on purpose: a coarse graph walk
    monkeypatch.undo()

    # The same query without iterative scans comes back short: the graph was walked.
    with db.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL hnsw.ef_search = 10")
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL hnsw.iterative_scan = off")
        rows = conn.execute(
            f"SELECT label FROM {index.table} WHERE label = ANY(%s::bigint[]) "
            "ORDER BY embedding <#> %s::vector LIMIT 10", (sorted(wide), queries[0])).fetchall()
    assert len(rows) < 10


def test_a_short_graph_answer_falls_back_to_exact(db: Database,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    vecs = unit(rng, 3000, 16)
    labels = list(range(3000))
    # Five rows allowed among 3,000 (the rest of the set names labels the index lacks, so it
    # is wide and goes to the graph): a scan budget of 20 tuples cannot find them all.
    index = PgVectorIndex(db, "short", 16, ef_search=10, max_scan_tuples=20)
    index.add(labels, vecs)
    exact = index._exact
    calls: list[int] = []
    monkeypatch.setattr(index, "_exact", lambda *a: calls.append(1) or exact(*a))
    allowed = set(range(0, 3000, 600)) | set(range(10**6, 10**6 + 3000))
    for q in unit(rng, 5, 16):
        hits = index.search(q, 10, allowed=allowed)
        assert [label for label, _ in hits] == exact_top(vecs, labels, q, 10, allowed)
        assert len(hits) == 5
    assert len(calls) == 5
    assert len(index.search(vecs[0], 1500)) == 1500  # k above pgvector's ef_search limit


def test_halfvec_halves_the_table(db: Database) -> None:
    vecs = passages(3000)
    sizes = {}
    for kind in ("vector", "halfvec"):
        index = PgVectorIndex(db, f"size-{kind}", vecs.shape[1], vector_type=kind)
        index.add(list(range(len(vecs))), vecs)
        index.save(1)
        sizes[kind] = index.disk_bytes()
        ((label, score),) = index.search(vecs[5], 1)
        assert label == 5 and score == pytest.approx(1.0, abs=1e-3)
    assert sizes["halfvec"] < 0.65 * sizes["vector"], sizes


def test_writes_are_shared_but_the_generation_moves_only_on_save(db: Database,
                                                                   postgres_url: str) -> None:
    other = Database(postgres_url)  # another process's pool
    try:
        storage, elsewhere = PgIndexStorage(db), PgIndexStorage(other)
        vec, kw = storage.open("shared", 8)
        v = unit(np.random.default_rng(2), 3, 8)
        vec.add([1, 2, 3], v)
        kw.add([(1, "shared keyword text"), (2, "another text")])
        vec.save(5)
        kw.save(5)
        vec.add([4], v[:1])
        kw.add([(4, "keyword again")])
        vec2, kw2 = elsewhere.open("shared", 8)
        assert len(vec2) == 4 and len(kw2) == 3  # seen at once
        assert vec2.generation == kw2.generation == 5  # but not stamped until saved
        vec.save(6)
        kw.save(6)
        assert vec2.generation == kw2.generation == 6
        assert storage.exists("shared") and storage.disk_bytes("shared") > 0
        vec2.clear()
        assert vec.generation == -1 and kw.generation == 6
        storage.remove("shared")
        assert not storage.exists("shared") and storage.disk_bytes("shared") == 0
        assert not elsewhere.exists("shared")
        vec3, kw3 = storage.open("shared", 8)
        assert len(vec3) == 0 and vec3.generation == kw3.generation == -1
    finally:
        other.close()


def test_a_reopen_with_another_dimension_starts_over(db: Database) -> None:
    index = PgVectorIndex(db, "dims", 8)
    index.add([1], unit(np.random.default_rng(3), 1, 8))
    index.save(2)
    again = PgVectorIndex(db, "dims", 12)
    assert again.generation == -1 and len(again) == 0


def test_keyword_labels_filter_and_stats_follow_replacements(db: Database) -> None:
    index = PgKeywordIndex(db, "kw")
    index.add([(1, "alpha beta"), (2, "alpha gamma gamma"), (3, "")])
    assert len(index) == 3  # an empty text still counts in N, as in FTS5
    index.add([(2, "delta")])
    index.remove([3, 99])
    assert len(index) == 2
    assert [label for label, _ in index.search("alpha delta", 10)] in ([1, 2], [2, 1])
    assert [label for label, _ in index.search("alpha delta", 10, allowed={2})] == [2]
    index.clear()
    assert len(index) == 0 and index.search("alpha", 5) == []


def test_keyword_terms_longer_than_a_btree_entry_are_indexed(db: Database) -> None:
    index = PgKeywordIndex(db, "long")
    rng = np.random.default_rng(4)
    blob = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzéñ"), 8000))  # incompressible
    other = blob[:-1] + "zz"
    index.add([(1, f"payload {blob}"), (2, f"payload {other}"), (3, "ñ" * 3000)])
    assert [label for label, _ in index.search(blob, 5)] == [1]
    assert [label for label, _ in index.search(other, 5)] == [2]
    assert [label for label, _ in index.search("ñ" * 3000, 5)] == [3]
    assert len(index.search("payload", 5)) == 2


def _holder_pid(db: Database, collection: str) -> int:
    with db.connection() as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
            "((classid::bigint << 32) | objid::bigint) = "
            "hashtextextended('semsearch-index:' || %s, 0)", (collection,)).fetchone()
    assert row is not None
    return int(row[0])


def test_the_index_lock_serializes_holders(db: Database) -> None:
    storage = PgIndexStorage(db)
    order: list[str] = []
    first_in = threading.Event()

    def second() -> None:
        first_in.wait(5)
        with storage.lock("locked"):
            order.append("second in")

    t = threading.Thread(target=second)
    t.start()
    with storage.lock("locked"):
        order.append("first in")
        first_in.set()
        time.sleep(0.5)
        order.append("first out")
    t.join(10)
    assert order == ["first in", "first out", "second in"]
    with storage.lock("another"), storage.lock("locked"):  # names are independent
        pass


def test_a_dead_holders_lock_goes_with_its_connection(db: Database, postgres_url: str) -> None:
    storage = PgIndexStorage(db)
    other = Database(postgres_url)
    got: list[float] = []
    try:
        with storage.lock("crash"):
            pid = _holder_pid(db, "crash")

            def wait_for_it() -> None:
                with PgIndexStorage(other).lock("crash"):
                    got.append(time.monotonic())

            t = threading.Thread(target=wait_for_it)
            t.start()
            time.sleep(0.3)
            assert got == []  # still held
            with other.connection() as conn:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            t.join(10)
            assert len(got) == 1  # the next holder got it while "we" never released it
        # leaving the block on a dead connection raises nothing
        with storage.lock("crash"):
            pass
    finally:
        other.close()



def test_database_errors_are_backend_errors_not_tracebacks(db: Database) -> None:
    storage = PgIndexStorage(db)
    vec, kw = storage.open("gone", 4)
    storage.remove("gone")  # dropped under the open handles (another process, say)
    with pytest.raises(BackendError, match="PostgreSQL failed while searching vectors"):
        vec.search(np.ones(4, np.float32) / 2, 3)
    with pytest.raises(BackendError, match="keyword index"):
        kw.add([(1, "text")])


def test_concurrent_writers_of_the_same_labels_neither_fail_nor_skew_counts(
        db: Database, postgres_url: str) -> None:
    other = Database(postgres_url)
    errors: list[BaseException] = []
    rng = np.random.default_rng(5)
    vecs = unit(rng, 200, 8)
    try:
        indexes = [(PgVectorIndex(d, "busy", 8), PgKeywordIndex(d, "busy")) for d in (db, other)]

        def writer(i: int) -> None:
            vec, kw = indexes[i]
            try:
                for round_ in range(5):
                    vec.add(list(range(200)), vecs)
                    kw.add([(n, f"word{n} writer{i} " + "pad " * (round_ + i)) for n in range(200)])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        vec, kw = indexes[0]
        assert len(vec) == 200 and len(kw) == 200
        with db.connection() as conn:
            stats = conn.execute(f"SELECT docs, total FROM {kw.tables[2]}").fetchone()
            lengths = conn.execute(f"SELECT count(*), sum(len) FROM {kw.tables[1]}").fetchone()
        assert stats == lengths
    finally:
        other.close()

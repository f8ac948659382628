"""Sync against the real PostgreSQL: rows inserted, updated, soft- and hard-deleted between
runs, and the collection checked after each run."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa

from semsearch.errors import BusyError, InputError, NotFoundError, SourceError
from semsearch.runtime.engine import Engine
from semsearch.services.sync import collection_lock, sync
from semsearch.services.sync_audit import audit
from semsearch.wiring import make_source
from tests.sync.conftest import T0, SourceDb, collection_state, describe, search_ids


def run(engine: Engine, db: SourceDb, full: bool = False, **over: object):  # type: ignore[no-untyped-def]
    spec = db.spec(**over)
    source = make_source(spec, engine.settings)
    try:
        return sync(engine, source, spec, full=full)
    finally:
        source.close()


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def test_inserts_updates_soft_and_hard_deletes_converge(engine: Engine, pg: SourceDb) -> None:
    pg.insert(range(1, 41))
    r = run(engine, pg)
    assert (r.status, r.rows_seen, r.new, r.changed, r.deleted) == ("ok", 40, 40, 0, 0)
    assert r.watermark == {"ts": {"datetime": T0.isoformat()}, "id": 40}
    assert engine.store.all_doc_ids("products") == sorted(str(i) for i in range(1, 41))
    doc = engine.store.get_document("products", "7")
    assert doc["metadata"] == {"category": "garden", "price": 12.99}
    assert doc["text"] == describe(7)

    pg.update([3, 4], at(1))
    pg.insert([41, 42], at(2))
    pg.exec("UPDATE products SET is_deleted = TRUE, updated_at = :u WHERE id = 5",
            {"u": at(3)})
    pg.exec("DELETE FROM products WHERE id = 6")  # a hard delete: invisible to a watermark
    r = run(engine, pg)
    assert (r.rows_seen, r.new, r.changed, r.unchanged, r.deleted) == (5, 2, 2, 0, 1)
    assert r.embedded == 4 and r.model_calls >= 1
    assert r.watermark == {"ts": {"datetime": at(3).isoformat()}, "id": 5}
    ids = set(engine.store.all_doc_ids("products"))
    assert "5" not in ids and "6" in ids and {"41", "42"} <= ids
    assert engine.store.get_document("products", "3")["text"] == describe(3, 1)
    assert "5" not in search_ids(engine, "products", describe(5))

    # An incremental run with nothing new reads nothing and embeds nothing.
    r = run(engine, pg)
    assert (r.rows_seen, r.embedded, r.model_calls) == (0, 0, 0)

    r = run(engine, pg, full=True)  # reconciliation finds the hard delete
    assert (r.mode, r.deleted, r.new, r.changed, r.embedded) == ("full", 1, 0, 0, 0)
    assert set(engine.store.all_doc_ids("products")) == set(pg.live_ids())

    clean = run(engine, pg, collection="clean")  # a first run over the final source
    assert collection_state(engine, "products") == collection_state(engine, "clean")
    for q in ("copper kettle", describe(3, 1), "leather boots for rain"):
        assert search_ids(engine, "products", q) == search_ids(engine, "clean", q)
    assert clean.embedded == 0  # every vector came from the cache


def test_unchanged_content_is_not_reembedded(engine: Engine, pg: SourceDb) -> None:
    pg.insert(range(1, 11))
    run(engine, pg)
    pg.exec("UPDATE products SET updated_at = :u", {"u": at(5)})  # touched, same content
    r = run(engine, pg)
    assert (r.rows_seen, r.unchanged, r.changed, r.embedded, r.chunks_written) == \
        (10, 10, 0, 0, 0)
    assert r.watermark == {"ts": {"datetime": at(5).isoformat()}, "id": 10}


def test_watermark_tie_break_reads_every_row_sharing_a_timestamp_once(
        engine: Engine, pg: SourceDb) -> None:
    pg.insert(range(1, 51))  # 50 rows, one timestamp, pages of 16
    r = run(engine, pg, batch_size=16)
    assert (r.rows_seen, r.new) == (50, 50)
    pg.insert(range(51, 56), at(0))  # same timestamp as the watermark, higher ids
    pg.update([2], at(0))  # same timestamp, lower id: behind the watermark, so only a
    r = run(engine, pg, batch_size=2)  # look-back window or --full can see it
    assert (r.rows_seen, r.new) == (5, 5)
    assert engine.store.get_document("products", "2")["text"] == describe(2)
    assert run(engine, pg, full=True).changed == 1
    assert r.watermark == {"ts": {"datetime": T0.isoformat()}, "id": 55}
    assert len(engine.store.all_doc_ids("products")) == 55


def test_lookback_catches_a_row_committed_late_with_an_older_timestamp(
        engine: Engine, pg: SourceDb) -> None:
    pg.insert(range(1, 6), at(10))
    run(engine, pg, lookback_seconds=120)
    # A transaction that stamped its row at minute 9 commits after the run above.
    pg.insert([6], at(9))
    r = run(engine, pg, collection="products", lookback_seconds=120)
    assert r.new == 1 and r.unchanged == 5  # the window re-read 5 rows, embedding none
    assert r.embedded == 1
    assert r.watermark == {"ts": {"datetime": at(10).isoformat()}, "id": 5}  # never back
    assert "6" in engine.store.all_doc_ids("products")


def test_without_lookback_a_late_row_waits_for_full(engine: Engine, pg: SourceDb) -> None:
    pg.insert(range(1, 6), at(10))
    run(engine, pg)
    pg.insert([6], at(9))
    assert run(engine, pg).rows_seen == 0
    assert run(engine, pg, full=True).new == 1


def test_bad_rows_are_recorded_and_skipped(engine: Engine, pg: SourceDb,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    engine.settings = engine.settings.model_copy(update={"max_text_chars": 500})
    pg.insert(range(1, 6))
    pg.exec("UPDATE products SET description = NULL WHERE id = 2")
    pg.exec("UPDATE products SET description = :d WHERE id = 4", {"d": "long " * 200})
    r = run(engine, pg)
    assert (r.status, r.new, r.rejected) == ("ok", 3, 2)
    assert engine.store.rejects("products") == {
        "2": "text column 'description' is NULL",
        "4": "text has 1,000 characters; the limit is 500 (SEMSEARCH_MAX_TEXT_CHARS)"}
    # Fixed in the source: indexed, and the record of the refusal goes.
    pg.exec("UPDATE products SET description = 'now a real text', updated_at = :u "
            "WHERE id = 2", {"u": at(1)})
    r = run(engine, pg)
    assert r.new == 1 and "2" in engine.store.all_doc_ids("products")
    assert list(engine.store.rejects("products")) == ["4"]
    # An indexed row that turns bad leaves the index: the source no longer has that text.
    pg.exec("UPDATE products SET description = NULL, updated_at = :u WHERE id = 3",
            {"u": at(2)})
    run(engine, pg)
    assert "3" not in engine.store.all_doc_ids("products")
    assert set(engine.store.rejects("products")) == {"3", "4"}


def test_missing_column_is_named(engine: Engine, pg: SourceDb) -> None:
    pg.insert([1])
    with pytest.raises(SourceError, match=r"no column\(s\) 'descr'; it has .*description"):
        run(engine, pg, text=("descr",))
    with pytest.raises(SourceError, match="no table 'nope'"):
        run(engine, pg, table="nope")
    # Both are on record as failed runs, and neither created the collection.
    runs = engine.store.list_runs("products")
    assert [r["status"] for r in runs] == ["failed", "failed"]
    assert "no table 'nope'" in runs[0]["stats"]["error"]
    assert "no column(s) 'descr'" in runs[1]["stats"]["error"]
    with pytest.raises(NotFoundError):
        engine.store.get_collection("products")


def test_source_going_away_mid_run_keeps_committed_batches(engine: Engine, pg: SourceDb) -> None:
    pg.insert(range(1, 41), at(0))
    pg.update(range(1, 41), at(1))  # distinct pages to resume between
    run(engine, pg, batch_size=10)
    for i in range(1, 41):
        pg.exec("UPDATE products SET updated_at = :u, description = :d WHERE id = :id",
                {"u": at(10 + i), "d": describe(i, 2), "id": i})
    dbname = pg.url.rsplit("/", 1)[1]
    admin = sa.create_engine(pg.url.rsplit("/", 1)[0] + "/postgres",
                             isolation_level="AUTOCOMMIT")
    spec = pg.spec(batch_size=10, retries=1)
    source = make_source(spec, engine.settings)
    seen = []

    def cut_after_second_batch(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:  # the database refuses connections and drops the open ones
            with admin.connect() as conn:
                conn.execute(sa.text(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false'))
                conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                     "WHERE datname = :d"), {"d": dbname})
    try:
        with pytest.raises(SourceError, match="source database went away while reading rows "
                                              "after 20 rows"):
            sync(engine, source, spec, on_progress=cut_after_second_batch)
    finally:
        source.close()
        pg.engine.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true'))
        admin.dispose()
    last = engine.store.list_runs("products")[0]
    assert last["status"] == "failed" and "went away" in last["stats"]["error"]
    state = engine.store.sync_state("products")
    assert state is not None and state.position == {
        "ts": {"datetime": at(30).isoformat()}, "id": 20}
    assert engine.store.get_document("products", "20")["text"] == describe(20, 2)
    assert engine.store.get_document("products", "21")["text"] == describe(21, 1)
    r = run(engine, pg, batch_size=10)  # back: resumes after the last committed batch
    assert (r.rows_seen, r.changed) == (20, 20)
    assert run(engine, pg, collection="clean").status == "ok"
    assert collection_state(engine, "products") == collection_state(engine, "clean")


def test_one_run_at_a_time(engine: Engine, pg: SourceDb) -> None:
    pg.insert([1])
    with collection_lock(engine, "products"), pytest.raises(BusyError,
                                                            match="already being synced"):
        run(engine, pg)
    assert run(engine, pg).status == "ok"


def test_refuses_a_second_source_for_one_collection(engine: Engine, pg: SourceDb) -> None:
    pg.insert([1])
    run(engine, pg)
    pg.exec("CREATE TABLE other AS SELECT * FROM products")
    with pytest.raises(InputError, match=r"is synced from .* refusing to sync it from"):
        run(engine, pg, table="other")


def test_audit_reports_drift_and_repair_fixes_it(engine: Engine, pg: SourceDb) -> None:
    pg.insert(range(1, 21))
    run(engine, pg)
    pg.exec("DELETE FROM products WHERE id IN (1, 2)")
    pg.exec("UPDATE products SET is_deleted = TRUE WHERE id = 3")  # not bumped: missed
    pg.exec("UPDATE products SET description = 'changed behind our back' WHERE id = 4")
    pg.insert([21])
    pg.exec("UPDATE products SET updated_at = :u WHERE id = 21", {"u": T0 - dt.timedelta(
        days=1)})
    spec = pg.spec()
    source = make_source(spec, engine.settings)
    try:
        rep = audit(engine, source, spec)
        assert (rep.missing, rep.stale, rep.extra, rep.deleted_still_indexed) == (1, 1, 3, 1)
        assert rep.drift and rep.examples["extra"] == ["1", "2", "3"]
        assert rep.derived_in_step
        assert len(engine.store.all_doc_ids("products")) == 20  # audit changes nothing
        rep = audit(engine, source, spec, repair=True)
        assert rep.repaired is not None and rep.repaired.status == "ok"
        again = audit(engine, source, spec)
    finally:
        source.close()
    assert not again.drift
    assert set(engine.store.all_doc_ids("products")) == set(pg.live_ids())

"""What a sync does when the source database says no: a statement failing at run time (a
division by zero in one row, a subquery MariaDB does not support, a column dropped while
the run reads) is one clear error and a failed run on record, never a traceback and never
retried as if the connection had gone; only lost or refused connections are retried. And
column names no identifier rule forbids (backticks, double quotes, spaces, ``%``, colons,
non-ASCII) sync from MariaDB, PostgreSQL and SQLite like any other."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from semsearch.config import Settings
from semsearch.errors import SourceError
from semsearch.runtime.engine import Engine
from semsearch.services.sync import SyncReport, sync
from semsearch.services.sync_config import SourceSpec
from semsearch.wiring import make_source, open_engine
from tests.sync.conftest import T0, SourceDb, describe


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The real executable, on the test's home (and whatever model cache the fixtures set)."""
    env = {**os.environ, "SEMSEARCH_HOME": str(settings.home), "SEMSEARCH_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def stored_document(settings: Settings, collection: str, doc_id: str) -> dict[str, Any]:
    engine = open_engine(settings)
    try:
        return engine.store.get_document(collection, doc_id)
    finally:
        engine.close()


def stored_ids(settings: Settings, collection: str) -> list[str]:
    engine = open_engine(settings)
    try:
        return engine.store.all_doc_ids(collection)
    finally:
        engine.close()


def run(engine: Engine, spec: SourceSpec, **kw: Any) -> SyncReport:
    source = make_source(spec, engine.settings)
    try:
        return sync(engine, source, spec, **kw)
    finally:
        source.close()


def query_spec(db: SourceDb, query: str, **over: Any) -> SourceSpec:
    return db.spec(**{"table": "", "query": query, "title": "", "metadata": (),
                      "updated_at": "", "deleted_flag": "", **over})


# -- 1. a statement failing at run time ------------------------------------------------------

def test_a_query_failing_in_one_row_is_one_clear_error_and_a_failed_run(
        settings: Settings, pg: SourceDb) -> None:
    pg.insert(range(1, 11))
    url = pg.url.replace("postgres@", "postgres:s3cret-pw@")  # trust auth: any password
    res = cli(settings, "sync", "--source", url, "--query",
              "SELECT id, description, title, 1/(id-5) AS x FROM products", "--text",
              "description", "--title", "title", "--metadata", "x", "--batch-size", "2",
              "-c", "p")
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "s3cret-pw" not in res.stdout + res.stderr
    masked = url.replace("s3cret-pw", "***")
    # Pages of 2 ordered by id: rows 1-4 were read and committed, the page of 5 fails.
    assert res.stderr.strip() == (f"error: sync of 'p' failed: {masked} query: error while "
                                  "reading rows after 4 rows: division by zero")
    line = json.loads(res.stdout)
    assert (line["event"], line["collection"], line["status"]) == ("sync_run", "p", "failed")
    assert "division by zero" in line["error"]

    runs = json.loads(cli(settings, "runs", "--json").stdout)["runs"]
    assert [(r["collection"], r["kind"], r["status"]) for r in runs] == [("p", "sync", "failed")]
    assert runs[0]["finished_at"] and "division by zero" in runs[0]["stats"]["error"]
    assert runs[0]["stats"]["new"] == 4
    # What was committed before the failure stays.
    assert stored_ids(settings, "p") == ["1", "2", "3", "4"]
    assert stored_document(settings, "p", "4")["metadata"] == {"x": -1}

    # The query fixed, the same source syncs the rest.
    res = cli(settings, "sync", "--source", url, "--query",
              "SELECT id, description, title FROM products", "--text", "description",
              "--title", "title", "-c", "p")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["new"] == 6


def test_an_error_while_checking_the_source_is_a_failed_run(
        engine: Engine, maria: SourceDb, caplog: pytest.LogCaptureFixture) -> None:
    """MariaDB refuses LIMIT inside IN (...) with NotSupportedError when the query is first
    run: the run is on record as failed although no row was read."""
    maria.insert(range(1, 6))
    spec = query_spec(maria, "SELECT id, description FROM products WHERE id IN "
                             "(SELECT id FROM products LIMIT 2)", text=("description",))
    with caplog.at_level(logging.WARNING), pytest.raises(SourceError) as err:
        run(engine, spec)
    assert "error while running the query: " in str(err.value)
    assert "doesn't yet support 'LIMIT & IN/ALL/ANY/SOME subquery'" in str(err.value)
    assert "retrying" not in caplog.text
    last = engine.store.list_runs("products")[0]
    assert last["status"] == "failed" and "doesn't yet support" in last["stats"]["error"]


# -- 2. only a lost or refused connection is retried -----------------------------------------

def test_an_unknown_column_at_run_time_is_reported_at_once_not_as_the_database_gone(
        engine: Engine, maria: SourceDb, caplog: pytest.LogCaptureFixture) -> None:
    """pymysql raises MariaDB's 1054 "Unknown column" as OperationalError, the class of a
    lost connection too; it must not be retried nor reported as the database going away."""
    maria.insert(range(1, 6))
    spec = maria.spec()

    def drop_a_column(total: int | None) -> None:  # after the check, before the first page
        maria.exec("ALTER TABLE products DROP COLUMN category")

    with caplog.at_level(logging.WARNING), pytest.raises(SourceError) as err:
        run(engine, spec, on_total=drop_a_column)
    msg = str(err.value)
    assert "error while reading rows: (1054, \"Unknown column" in msg and "category" in msg
    assert "went away" not in msg and "retries" not in msg and "retrying" not in caplog.text
    last = engine.store.list_runs("products")[0]
    assert last["status"] == "failed" and "Unknown column" in last["stats"]["error"]


def test_a_row_dependent_mariadb_error_keeps_the_batches_before_it(
        engine: Engine, maria: SourceDb, caplog: pytest.LogCaptureFixture) -> None:
    maria.insert(range(1, 9))
    spec = query_spec(maria, "SELECT p.id, p.description, (SELECT title FROM products q "
                             "WHERE p.id = 5 OR q.id = p.id) AS t FROM products p",
                      text=("description",), metadata=("t",), batch_size=2)
    with caplog.at_level(logging.WARNING), pytest.raises(
            SourceError, match=r"error while reading rows after 4 rows: \(1242, 'Subquery "
                               r"returns more than 1 row'\)"):
        run(engine, spec)
    assert "retrying" not in caplog.text
    assert engine.store.all_doc_ids("products") == ["1", "2", "3", "4"]
    assert engine.store.get_document("products", "3")["metadata"] == {"t": "Item 3"}


def test_a_refused_connection_is_retried_then_named(
        engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    spec = SourceSpec(collection="gone", source="mysql://root:pa55word@127.0.0.1:1/x",
                      table="t", retries=1).validate()
    with caplog.at_level(logging.WARNING), pytest.raises(SourceError) as err:
        run(engine, spec)
    msg = str(err.value)
    assert msg.startswith("mysql://root:***@127.0.0.1:1/x table t: cannot connect to the "
                          "source database while reading the table's columns (1 retries): ")
    assert "Connection refused" in msg and "pa55word" not in msg + caplog.text
    assert caplog.text.count("retrying in") == 1
    assert engine.store.list_runs("gone")[0]["status"] == "failed"


# -- 3. column names that need quoting ----------------------------------------------------

ODD = {"id": "we`ird", "text": "bo dy", "title": 'ti"tle', "updated_at": "up at",
       "deleted": "del?"}
ODD_META = ("pct%s", "ünï", "a:b", "it's", "50% off")


def _quote(name: str, q: str) -> str:
    return q + name.replace(q, q * 2) + q


@pytest.fixture(params=["mariadb", "postgresql", "sqlite"])
def odd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SourceDb, str]]:
    """A table whose every column name needs quoting, in each kind of source database."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'odd.db'}"
        db: SourceDb = SourceDb(url=url, engine=sa.create_engine(url))
    else:
        db = request.getfixturevalue("maria" if request.param == "mariadb" else "pg")
    q = "`" if request.param == "mariadb" else '"'
    cols = [f"{_quote(ODD['id'], q)} VARCHAR(20) PRIMARY KEY", f"{_quote(ODD['text'], q)} TEXT",
            f"{_quote(ODD['title'], q)} VARCHAR(100)", f"{_quote(ODD['updated_at'], q)} "
            "TIMESTAMP NULL", f"{_quote(ODD['deleted'], q)} BOOLEAN NOT NULL DEFAULT FALSE",
            *[f"{_quote(m, q)} VARCHAR(50)" for m in ODD_META]]
    db.exec(f"CREATE TABLE odd ({', '.join(cols)})")
    names = [ODD["id"], ODD["text"], ODD["title"], ODD["updated_at"], *ODD_META]
    rows = [{"p0": f"r%s{i}", "p1": describe(i), "p2": f"Title {i}", "p3": _stamp(db, T0),
             "p4": f"{i}%", "p5": f"ü{i}", "p6": f"{i}:{i}", "p7": f"it's {i}", "p8": "50%"}
            for i in range(1, 6)]
    db.exec(f"INSERT INTO odd ({', '.join(_quote(n, q) for n in names)}) VALUES "
            f"({', '.join(f':p{i}' for i in range(len(names)))})", rows)
    yield db, q
    if request.param == "sqlite":
        db.engine.dispose()


def _stamp(db: SourceDb, value: dt.datetime) -> Any:
    """SQLite has no timestamp type: store the text SQLAlchemy binds for a datetime, so the
    watermark's comparisons compare like with like."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f") if db.url.startswith("sqlite") else value


def _odd_spec(db: SourceDb, collection: str = "odd", **over: Any) -> SourceSpec:
    return db.spec(collection, **{
        "table": "odd", "id": ODD["id"], "text": (ODD["text"],), "title": ODD["title"],
        "metadata": ODD_META, "updated_at": ODD["updated_at"], "deleted_flag": ODD["deleted"],
        "batch_size": 2, **over})


def test_columns_whose_names_need_quoting_sync_as_id_text_title_and_metadata(
        engine: Engine, odd: tuple[SourceDb, str]) -> None:
    db, q = odd
    r = run(engine, _odd_spec(db))
    assert (r.status, r.new, r.watermark) == ("ok", 5, {"ts": {"datetime": T0.isoformat()},
                                                         "id": "r%s5"})
    ids = [f"r%s{i}" for i in range(1, 6)]
    assert engine.store.all_doc_ids("odd") == ids
    doc = engine.store.get_document("odd", "r%s2")
    assert (doc["title"], doc["text"]) == ("Title 2", describe(2))
    assert doc["metadata"] == {"pct%s": "2%", "ünï": "ü2", "a:b": "2:2", "it's": "it's 2",
                               "50% off": "50%"}

    # Incremental: the watermark and the keyset pages compare these columns too.
    later = T0 + dt.timedelta(minutes=1)
    db.exec(f"UPDATE odd SET {_quote(ODD['text'], q)} = :t, {_quote(ODD['updated_at'], q)} "
            f"= :u WHERE {_quote(ODD['id'], q)} = :i",
            {"t": describe(3, 1), "u": _stamp(db, later), "i": "r%s3"})
    db.exec(f"UPDATE odd SET {_quote(ODD['deleted'], q)} = TRUE, "
            f"{_quote(ODD['updated_at'], q)} = :u WHERE {_quote(ODD['id'], q)} = :i",
            {"u": _stamp(db, later), "i": "r%s4"})
    r = run(engine, _odd_spec(db))
    assert (r.rows_seen, r.changed, r.deleted, r.new) == (2, 1, 1, 0)
    assert r.watermark == {"ts": {"datetime": later.isoformat()}, "id": "r%s4"}
    assert engine.store.get_document("odd", "r%s3")["text"] == describe(3, 1)
    assert "r%s4" not in engine.store.all_doc_ids("odd")

    # The same columns through a query read the same documents.
    cols = ", ".join(_quote(c, q) for c in [*ODD.values(), *ODD_META])
    r = run(engine, _odd_spec(db, collection="odd_q", table="",
                              query=f"SELECT {cols} FROM odd WHERE {_quote('50% off', q)} "
                                    "LIKE '50%'"))
    assert (r.status, r.new, r.deleted) == ("ok", 4, 0)
    assert [engine.store.get_document("odd_q", i) for i in engine.store.all_doc_ids("odd_q")] \
        == [engine.store.get_document("odd", i) for i in engine.store.all_doc_ids("odd")]


def test_cli_syncs_a_mariadb_column_named_with_a_backtick(settings: Settings,
                                                          maria: SourceDb) -> None:
    maria.exec("CREATE TABLE notes (`we``ird` INTEGER PRIMARY KEY, `no``te` TEXT, "
               "`ti``tle` VARCHAR(50), `ta``g` VARCHAR(20), `up``d` DATETIME)")
    maria.exec("INSERT INTO notes VALUES (:i, :n, :t, :g, :u)",
               [{"i": i, "n": describe(i), "t": f"Note {i}", "g": f"g{i % 2}", "u": T0}
                for i in range(1, 4)])
    res = cli(settings, "sync", "--source", maria.url, "--table", "notes", "--id", "we`ird",
              "--text", "no`te", "--title", "ti`tle", "--metadata", "ta`g", "--updated-at",
              "up`d", "--lookback", "0", "-c", "notes")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["new"] == 3
    maria.exec("UPDATE notes SET `no``te` = 'rewritten', `up``d` = :u WHERE `we``ird` = 2",
               {"u": T0 + dt.timedelta(minutes=1)})
    res = cli(settings, "sync", "-c", "notes")  # the stored settings, names and all
    assert res.returncode == 0, res.stderr
    line = json.loads(res.stdout)
    assert (line["rows_seen"], line["changed"]) == (1, 1)
    doc = stored_document(settings, "notes", "2")
    assert (doc["text"], doc["title"], doc["metadata"]) == ("rewritten", "Note 2",
                                                            {"ta`g": "g0"})

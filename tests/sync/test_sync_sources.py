"""Sync from the other kinds of source: MariaDB, a SQL query, SQLite, a folder of files; and
the command line: sync.toml with several sources, the JSON metrics line, run history."""

from __future__ import annotations

import datetime as dt
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from semsearch.cli.main import cli
from semsearch.errors import InputError
from semsearch.runtime.engine import Engine
from semsearch.services.sync import sync
from semsearch.services.sync_config import SourceSpec, load_sync_file
from semsearch.wiring import make_source
from tests.sync.conftest import T0, SourceDb, describe


def _run(engine: Engine, spec: SourceSpec, full: bool = False):  # type: ignore[no-untyped-def]
    source = make_source(spec, engine.settings)
    try:
        return sync(engine, source, spec, full=full)
    finally:
        source.close()


def test_mariadb_incremental_with_soft_delete(engine: Engine, maria: SourceDb) -> None:
    maria.insert(range(1, 13))
    r = _run(engine, maria.spec())
    assert (r.new, r.watermark) == (12, {"ts": {"datetime": T0.isoformat()}, "id": 12})
    t1 = T0 + dt.timedelta(seconds=30)
    maria.update([4], t1)
    maria.exec("UPDATE products SET is_deleted = 1, updated_at = :u WHERE id = 5", {"u": t1})
    r = _run(engine, maria.spec())
    assert (r.rows_seen, r.changed, r.deleted) == (2, 1, 1)
    assert engine.store.all_doc_ids("products") == maria.live_ids()
    assert engine.store.get_document("products", "4")["text"] == describe(4, 1)


def test_a_query_source_joins_and_renames(engine: Engine, pg: SourceDb) -> None:
    pg.insert(range(1, 6))
    pg.exec("CREATE TABLE stock (product_id INTEGER, qty INTEGER)")
    pg.exec("INSERT INTO stock VALUES (1, 10), (2, 0), (3, 4), (4, 1), (5, 9)")
    spec = pg.spec(table="", query="SELECT p.id AS pid, p.title, p.description AS body, "
                   "p.updated_at AS changed, s.qty FROM products p JOIN stock s "
                   "ON s.product_id = p.id WHERE s.qty > 0", id="pid", text=("body",),
                   metadata=("qty",), updated_at="changed", deleted_flag="")
    r = _run(engine, spec)
    assert r.new == 4 and engine.store.all_doc_ids("products") == ["1", "3", "4", "5"]
    assert engine.store.get_document("products", "3")["metadata"] == {"qty": 4}
    pg.exec("UPDATE stock SET qty = 0 WHERE product_id = 4")  # leaves the query's rows
    assert _run(engine, spec, full=True).deleted == 1
    bad = pg.spec(table="", query="SELECT id FROM products", text=("body",), metadata=(),
                  updated_at="", deleted_flag="", title="")
    with pytest.raises(InputError, match=r"no column\(s\) 'body'; it has id"):
        _run(engine, bad)


def test_sqlite_source_without_updated_at_is_read_whole_and_reconciled(
        engine: Engine, tmp_path: Path) -> None:
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)")
        c.executemany("INSERT INTO notes VALUES (?, ?)",
                      [(f"n{i}", describe(i)) for i in range(8)])
    spec = SourceSpec(collection="notes", source=f"sqlite:///{db}", table="notes",
                      text=("body",)).validate()
    r = _run(engine, spec)
    assert (r.mode, r.new, r.watermark) == ("full", 8, None)
    with sqlite3.connect(db) as c:
        c.execute("DELETE FROM notes WHERE id = 'n3'")
        c.execute("UPDATE notes SET body = 'changed text' WHERE id = 'n4'")
    r = _run(engine, spec)
    assert (r.deleted, r.changed, r.unchanged, r.embedded) == (1, 1, 6, 1)


def test_folder_source_skips_unchanged_files_by_mtime_and_size(engine: Engine,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(5):
        (folder / f"doc{i}.md").write_text(f"# Doc {i}\n\n{describe(i)}\n", encoding="utf-8")
    (folder / "empty.txt").write_text("", encoding="utf-8")
    spec = SourceSpec(collection="docs", source=str(folder)).validate()
    r = _run(engine, spec)
    assert (r.new, r.rejected) == (5, 1)
    assert "empty.txt" in engine.store.rejects("docs")
    time.sleep(0.01)
    (folder / "doc1.md").write_text("# Doc 1\n\nrewritten entirely\n", encoding="utf-8")
    (folder / "doc2.md").unlink()
    (folder / "doc9.md").write_text("# Doc 9\n\na new one\n", encoding="utf-8")
    os.utime(folder / "doc3.md")  # touched, same content: read, found unchanged by hash
    r = _run(engine, spec)
    # empty.txt is as it was: not read again, and its refusal stays on record.
    assert (r.new, r.changed, r.deleted, r.unchanged, r.rejected) == (1, 1, 1, 4, 0)
    assert "empty.txt" in engine.store.rejects("docs")
    assert engine.store.all_doc_ids("docs") == ["doc0.md", "doc1.md", "doc3.md", "doc4.md",
                                                "doc9.md"]
    assert engine.store.get_document("docs", "doc1.md")["text"] == "rewritten entirely"
    # Proof the skip is by (mtime, size) without reading: same size, old mtime restored.
    st = (folder / "doc4.md").stat()
    text = (folder / "doc4.md").read_text(encoding="utf-8")
    (folder / "doc4.md").write_text(text.replace("Doc 4", "Doc X"), encoding="utf-8")
    os.utime(folder / "doc4.md", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _run(engine, spec).changed == 0
    assert _run(engine, spec, full=True).changed == 1  # --full reads every file


def test_cli_sync_toml_several_sources_json_line_and_runs(
        settings: object, pg: SourceDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg.insert(range(1, 11))
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text(describe(1), encoding="utf-8")
    monkeypatch.setenv("SHOP_DB_URL", pg.url)
    monkeypatch.setenv("SEMSEARCH_NO_PROGRESS", "1")
    conf = tmp_path / "sync.toml"
    conf.write_text(f"""
[defaults]
lookback_seconds = 0
batch_size = 4

[[source]]
name = "shop"
url = "${{SHOP_DB_URL}}"
table = "products"
text = "description"
title = "title"
metadata = ["category", "price"]
updated_at = "updated_at"
deleted_flag = "is_deleted"
collection = "products"

[[source]]
source = "{folder}"
collection = "notes"
""", encoding="utf-8")
    assert [s.collection for s in load_sync_file(conf)] == ["products", "notes"]
    runner = CliRunner()
    res = runner.invoke(cli, ["sync", "--config", str(conf)])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [(x["collection"], x["status"], x["new"]) for x in lines] == \
        [("products", "ok", 10), ("notes", "ok", 1)]
    keys = {"rows_seen", "new", "changed", "unchanged", "deleted", "chunks_written",
            "model_calls", "tokens", "cost", "cache_hits", "embed_p50_ms", "embed_p95_ms",
            "seconds", "watermark"}
    assert keys <= set(lines[0])
    assert lines[0]["watermark"] == {"ts": {"datetime": T0.isoformat()}, "id": 10}
    assert lines[0]["model_calls"] >= 1 and lines[0]["embed_p95_ms"] > 0

    # The stored settings let a bare --collection sync, audit and repair.
    pg.exec("DELETE FROM products WHERE id = 3")
    res = runner.invoke(cli, ["sync", "--audit", "-c", "products"])
    assert res.exit_code == 1 and '"extra": 1' in res.stdout and "DRIFT" in res.stderr
    res = runner.invoke(cli, ["sync", "--audit", "--repair", "-c", "products"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["sync", "-c", "products"])
    assert res.exit_code == 0 and json.loads(res.stdout)["rows_seen"] == 0

    res = runner.invoke(cli, ["runs", "-c", "products"])
    assert res.exit_code == 0
    rows = res.stdout.splitlines()
    assert rows[0].split()[:6] == ["id", "collection", "kind", "started", "finished", "status"]
    assert len(rows) == 4 and all(" sync " in r and " ok " in r for r in rows[1:])
    res = runner.invoke(cli, ["runs", "--json"])
    assert {r["collection"] for r in json.loads(res.stdout)["runs"]} == {"products", "notes"}


def test_cli_failures_exit_non_zero_with_a_message(settings: object, pg: SourceDb) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["sync", "--source", pg.url, "--table", "products", "--text",
                              "nope", "-c", "p"])
    assert res.exit_code == 1
    assert "error: sync of 'p' failed:" in res.stderr and "no column(s) 'nope'" in res.stderr
    assert json.loads(res.stdout)["status"] == "failed"
    res = runner.invoke(cli, ["sync", "-c", "never"])
    assert res.exit_code != 0
    res = runner.invoke(cli, ["sync", "--source", "postgresql://postgres:secret@127.0.0.1:1/x",
                              "--table", "t", "-c", "p2", "--text", "a"])
    assert res.exit_code == 1 and "secret" not in res.output and "***" in res.stderr

"""Kill -9 at several points of a sync, rerun, and require the collection to equal what a
clean run over the same source produces: same documents, same chunks, no duplicates,
nothing missing, derived indexes in step. The kills are real SIGKILLs of a real
``semsearch sync`` process: at named points (SEMSEARCH_FAILPOINTS) and at a moment picked
by watching the store from outside."""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from semsearch.config import Settings
from semsearch.wiring import open_engine
from tests.sync.conftest import T0, SourceDb, collection_state, search_ids


def _cli(db: SourceDb, settings: Settings, collection: str) -> list[str]:
    return [sys.executable, "-m", "semsearch", "sync", "--source", db.url, "--table",
            "products", "--id", "id", "--text", "description", "--title", "title",
            "--metadata", "category,price", "--updated-at", "updated_at", "--deleted-flag",
            "is_deleted", "--lookback", "0", "--batch-size", "8", "-c", collection]


def _env(settings: Settings, failpoint: str = "") -> dict[str, str]:
    env = dict(os.environ, SEMSEARCH_HOME=str(settings.home), SEMSEARCH_NO_PROGRESS="1",
               SEMSEARCH_EMBEDDER_THREADS="1")
    env.pop("SEMSEARCH_FAILPOINTS", None)
    if failpoint:
        env["SEMSEARCH_FAILPOINTS"] = failpoint
    return env


def _sync(db: SourceDb, settings: Settings, collection: str, failpoint: str = "") -> int:
    proc = subprocess.run(_cli(db, settings, collection), env=_env(settings, failpoint),
                          capture_output=True, text=True, timeout=300)
    if failpoint:
        assert proc.returncode == -signal.SIGKILL, (failpoint, proc.returncode, proc.stderr)
    else:
        assert proc.returncode == 0, proc.stderr
    return proc.returncode


def _generation(settings: Settings, collection: str) -> int:
    with sqlite3.connect(settings.store_path, timeout=10) as conn:
        row = conn.execute("SELECT generation FROM collections WHERE name = ?",
                           (collection,)).fetchone()
    return int(row[0]) if row else -1


def _kill_mid_run(db: SourceDb, settings: Settings, collection: str, after_gen: int) -> None:
    """Kill -9 as soon as the run has committed past ``after_gen``: wherever it is then."""
    proc = subprocess.Popen(_cli(db, settings, collection), env=_env(settings),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if _generation(settings, collection) > after_gen:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


@pytest.mark.embedded_only(
    reason="reads the SQLite store from outside (tests/e2e/test_postgres_shared.py kills "
           "PostgreSQL runs)")
def test_kill_9_at_any_point_then_rerun_equals_a_clean_run(settings: Settings,
                                                           pg: SourceDb) -> None:
    pg.insert(range(1, 61))
    first_run_points = ["after_commit=2", "after_batch=4", "before_save=1"]
    second_run_points = ["before_commit=1", "after_commit=1", "before_save=1"]
    for i, point in enumerate(first_run_points):
        _sync(pg, settings, f"a{i}", point)
        _sync(pg, settings, f"a{i}")
    _kill_mid_run(pg, settings, "a_timed", after_gen=2)
    _sync(pg, settings, "a_timed")
    for i in range(len(second_run_points)):
        _sync(pg, settings, f"b{i}")

    # Between runs: updates, inserts and soft deletes.
    t1 = T0 + dt.timedelta(minutes=1)
    pg.update(range(1, 60, 6), t1, version=3)
    pg.insert(range(61, 71), t1)
    pg.exec("UPDATE products SET is_deleted = TRUE, updated_at = :u WHERE id IN (2, 30, 61)",
            {"u": t1 + dt.timedelta(seconds=1)})
    for i, point in enumerate(second_run_points):
        _sync(pg, settings, f"b{i}", point)
        _sync(pg, settings, f"b{i}")
    for name in [f"a{i}" for i in range(len(first_run_points))] + ["a_timed"]:
        _sync(pg, settings, name)  # catch the first-run collections up too
    _sync(pg, settings, "clean")

    names = [f"a{i}" for i in range(len(first_run_points))] + ["a_timed"] + \
        [f"b{i}" for i in range(len(second_run_points))]
    engine = open_engine(settings)
    try:
        reference = collection_state(engine, "clean")
        assert sorted(reference["docs"]) == pg.live_ids()
        queries = ["copper kettle", "wool blanket for the garden", "Revised edition 3"]
        expected = {q: search_ids(engine, "clean", q) for q in queries}
        for name in names:
            assert collection_state(engine, name) == reference, name
            assert {q: search_ids(engine, name, q) for q in queries} == expected, name
            statuses = [r["status"] for r in engine.store.list_runs(name)]
            assert statuses.count("interrupted") == 1 and "running" not in statuses, name
            state = engine.store.sync_state(name)
            assert state is not None and state.position == \
                engine.store.sync_state("clean").position  # type: ignore[union-attr]
    finally:
        engine.close()


def test_a_second_run_on_the_same_collection_exits_3(settings: Settings,
                                                     pg: SourceDb, tmp_path: Path) -> None:
    pg.insert(range(1, 3))
    from semsearch.services.sync import collection_lock

    engine = open_engine(settings)
    try:
        with collection_lock(engine, "products"):
            proc = subprocess.run(_cli(pg, settings, "products"), env=_env(settings),
                                  capture_output=True, text=True, timeout=120)
    finally:
        engine.close()
    assert proc.returncode == 3
    assert "collection 'products' is already being synced (" in proc.stderr
    assert proc.stdout == ""

"""The ``SearchSettingsLog`` part of the ``Store`` contract (``semsearch tune``'s revisions),
on every store: numbering, the live revision after reverts, notes and settings coming back
as stored, names kept apart, persistence across a reopen, and concurrent appends from two
store objects (two processes) numbered without a gap or a repeat."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from semsearch.adapters.stores.sqlite_store import SqliteDocumentStore
from semsearch.errors import InputError
from semsearch.ports import SettingsRevision, Store

Factory = Callable[[Path], Store]

BACKENDS = [
    pytest.param(lambda folder: SqliteDocumentStore(folder / "store.db"), id="sqlite"),
    pytest.param("postgresql", id="postgres"),  # a fresh database per test (postgres_url)
]

SETTINGS = {"fusion": "minmax", "rrf_k": 60, "candidates": 100,
            "weights": {"dense": 0.3, "keyword": 0.7}, "title_weight": 2.5}


@pytest.fixture(params=BACKENDS)
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    if request.param == "postgresql":
        from semsearch.adapters.postgres.db import Database
        from semsearch.adapters.postgres.store import PostgresStore

        url = request.getfixturevalue("postgres_url")
        factory: Factory = lambda folder: PostgresStore(Database(url, pool_size=4))  # noqa: E731
    else:
        factory = request.param
    opened: list[Store] = []

    def open_() -> Store:
        opened.append(factory(tmp_path))
        return opened[-1]

    yield open_
    for store in opened:
        store.close()


def _live(revs: list[SettingsRevision]) -> int:
    live = [r.revision for r in revs if r.reverted_at is None]
    return live[-1] if live else 0


def test_revisions_append_come_back_as_stored_and_stay_apart(
        open_store: Callable[[], Store]) -> None:
    store = open_store()
    assert store.search_settings("docs") == []
    first = store.add_search_settings("docs", SETTINGS, {"by": "tune", "ndcg@10": 0.71})
    assert (first.collection, first.revision, first.reverted_at) == ("docs", 1, None)
    assert dict(first.settings) == SETTINGS and dict(first.note)["ndcg@10"] == 0.71
    assert first.created_at[:4].isdigit()
    store.add_search_settings("docs", {**SETTINGS, "weights": None}, {})
    store.add_search_settings("other", SETTINGS, {})
    revs = store.search_settings("docs")
    assert [r.revision for r in revs] == [1, 2]
    assert revs[0] == first
    assert revs[1].settings["weights"] is None
    assert [r.revision for r in store.search_settings("other")] == [1]


def test_revert_walks_back_to_nothing_then_refuses(open_store: Callable[[], Store]) -> None:
    store = open_store()
    for i in range(3):
        store.add_search_settings("docs", {**SETTINGS, "rrf_k": 10 + i}, {})
    now = store.revert_search_settings("docs")
    assert now is not None and now.revision == 2 and now.settings["rrf_k"] == 11
    assert _live(store.search_settings("docs")) == 2
    again = store.add_search_settings("docs", SETTINGS, {})
    assert again.revision == 4  # after every earlier one, reverted ones included
    assert store.revert_search_settings("docs").revision == 2  # type: ignore[union-attr]
    assert store.revert_search_settings("docs").revision == 1  # type: ignore[union-attr]
    assert store.revert_search_settings("docs") is None  # the built-in defaults
    with pytest.raises(InputError, match="no tuned search defaults"):
        store.revert_search_settings("docs")
    with pytest.raises(InputError):
        store.revert_search_settings("never-tuned")
    revs = store.search_settings("docs")
    assert [r.revision for r in revs] == [1, 2, 3, 4]
    assert all(r.reverted_at is not None for r in revs)
    assert store.search_settings("other") == []


def test_revisions_survive_a_reopen_and_are_shared(open_store: Callable[[], Store]) -> None:
    a = open_store()
    a.add_search_settings("docs", SETTINGS, {"by": "api"})
    a.add_search_settings("docs", SETTINGS, {})
    a.revert_search_settings("docs")
    b = open_store()  # another process's view of the same database
    revs = b.search_settings("docs")
    assert [(r.revision, r.reverted_at is None) for r in revs] == [(1, True), (2, False)]
    assert revs[0].note == {"by": "api"}


def test_concurrent_appends_number_without_gaps_or_repeats(
        open_store: Callable[[], Store]) -> None:
    stores = [open_store(), open_store()]
    errors: list[BaseException] = []

    def work(store: Store) -> None:
        try:
            for _ in range(10):
                store.add_search_settings("docs", SETTINGS, {})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert [r.revision for r in stores[0].search_settings("docs")] == list(range(1, 21))

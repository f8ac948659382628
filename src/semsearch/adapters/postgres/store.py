"""The canonical store on PostgreSQL: the same contract as the SQLite store, shared by every
process and machine that points ``SEMSEARCH_STORE`` at one database.

How the SQLite semantics carry over:

- ``write`` is one transaction that first locks its collection's row (``FOR UPDATE``), so
  concurrent writers of one collection, from any process, serialize and each committed
  write that changes something adds exactly one to the generation. Writers of different
  collections do not wait for each other.
- Chunk labels come from an identity column: a sequence never hands a value out twice (a
  rolled-back write leaves a gap, never a reuse), across collections and drops.
- Alias swaps are compare-and-swap under a transaction-level advisory lock on the alias, so
  two swaps of a name that has no row yet cannot both win.
- Metadata is ``jsonb``; filters compile to SQL over it with the semantics of
  ``core.filters.matches`` (booleans are the numbers 1 and 0, as in Python; strings compare
  by code point; anything else never matches a range). Numbers compare as exact decimals,
  which agrees with Python everywhere but one corner: an integer beyond 2**53 lying between a
  float's shortest decimal form and its exact binary value.
- PostgreSQL text cannot hold the NUL character, nor JSON a NaN: a document carrying one is
  refused with an ``InputError`` naming it (the batch is not written), not stored altered.
- ``jsonb`` keeps neither key order nor a float's spelling: metadata comes back equal, its
  keys ordered by PostgreSQL, and ``1e+20`` as ``100000000000000000000``."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import numpy as np

from semsearch.adapters.postgres import schema
from semsearch.adapters.postgres.db import Database
from semsearch.core.filters import Filter
from semsearch.core.types import Chunk, Document, EmbedderIdentity
from semsearch.errors import (
    AlreadyExistsError,
    BackendError,
    InputError,
    NotFoundError,
    StaleWriteError,
)
from semsearch.ports import (
    CollectionInfo,
    DocumentWrite,
    LedgerUpdate,
    SettingsRevision,
    StoredChunk,
    SyncState,
    Vectors,
    WriteResult,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_C = "semsearch_collections"
_D = "semsearch_documents"
_K = "semsearch_chunks"
_TABLES = (_C, _D, _K, "semsearch_runs", "semsearch_sync_state", "semsearch_aliases",
           "semsearch_rejects")
# Alias swaps lock (schema.LOCK_CLASS + 2, hashtext(alias)): the two-key advisory space,
# apart from the single-key locks of the collection locks and the derived indexes.
_LOCK_ALIAS = 2
_LOCK_SETTINGS = 3  # search-default revisions of one name (schema.LOCK_CLASS + 3)


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _unstorable(value: Any) -> str | None:
    """What PostgreSQL cannot store in ``value`` (text and jsonb hold no NUL; JSON has no
    NaN or infinity), or None."""
    if isinstance(value, str):
        return "a NUL character (\\x00)" if "\x00" in value else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"the number {value}"
    if isinstance(value, Mapping):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple):
        for v in value:
            if (found := _unstorable(v)) is not None:
                return found
    return None


def _check_storable(w: DocumentWrite) -> None:
    d = w.document
    found = _unstorable([d.id, d.title, d.text, d.metadata,
                         *((c.id, c.text, c.title) for c in w.chunks)])
    if found is not None:
        raise InputError(f"document {d.id!r} holds {found}, which PostgreSQL cannot store; "
                         "nothing of this batch was written")


class PostgresStore:
    """``Store`` over one PostgreSQL database (see the module doc). Migrates the schema on
    first use. ``owns_db``: ``close()`` closes the pool too (off when other adapters share
    it)."""

    def __init__(self, db: Database, *, owns_db: bool = True) -> None:
        self._db = db
        self._owns_db = owns_db
        with self._errors("opening"):
            if schema.current_version(db) != schema.LATEST:
                for sql in schema.migrate(db):
                    log.info("migrated %s: %s", db.shown, sql.splitlines()[0])

    # -- plumbing ------------------------------------------------------------------------
    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Driver errors out as BackendError naming the server and the operation (the
        psycopg error kept as ``__cause__``); semsearch's own errors pass through."""
        import psycopg

        try:
            yield
        except UnicodeEncodeError:
            raise InputError(f"{what}: a text holds an unpaired surrogate, which is not valid "
                             "Unicode; nothing was written") from None
        except psycopg.Error as exc:
            raise BackendError(f"PostgreSQL at {self._db.shown}: {what} failed: "
                               f"{_first_line(exc)}") from exc

    def _run(self, fn: Callable[[Any], T], what: str) -> T:
        with self._errors(what):
            return self._db.run(fn, what=what)

    def _all(self, sql: str, params: Sequence[Any] = (), what: str = "a read") -> list[Any]:
        with self._errors(what), self._db.connection() as conn:
            return list(conn.execute(sql, params).fetchall())

    def _one(self, sql: str, params: Sequence[Any] = (), what: str = "a read") -> Any:
        rows = self._all(sql, params, what)
        return rows[0] if rows else None

    def ping(self) -> bool:
        """The database answers now (for readiness probes); never raises."""
        try:
            with self._db.connection() as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            return False

    # -- collections -----------------------------------------------------------------------
    def create_collection(self, name: str, identity: EmbedderIdentity,
                          chunker: Mapping[str, Any]) -> CollectionInfo:
        import psycopg

        try:
            self._run(lambda c: c.execute(
                f"INSERT INTO {_C} (name, identity, chunker) VALUES (%s, %s::jsonb, "
                "%s::jsonb)", (name, _json(identity.to_dict()), _json(dict(chunker)))),
                "creating a collection")
        except BackendError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise AlreadyExistsError(f"collection {name!r} already exists") from None
            raise
        return self.get_collection(name)

    def get_collection(self, name: str) -> CollectionInfo:
        row = self._one(f"SELECT name, identity, chunker, generation, created_at, documents, "
                        f"chunks FROM {_C} WHERE name = %s", (name,))
        if row is None:
            known = [r[0] for r in self._all(f"SELECT name FROM {_C} ORDER BY name")]
            hint = f"; known: {', '.join(known)}" if known else "; none exist yet"
            raise NotFoundError(f"unknown collection {name!r}{hint}")
        return _info(row)

    def list_collections(self) -> list[CollectionInfo]:
        return [_info(r) for r in self._all(
            f"SELECT name, identity, chunker, generation, created_at, documents, chunks "
            f"FROM {_C} ORDER BY name")]

    def drop_collection(self, name: str) -> None:
        self.get_collection(name)

        def drop(c: Any) -> None:
            for sql in (f"DELETE FROM {_K} WHERE collection = %s",
                        f"DELETE FROM {_D} WHERE collection = %s",
                        f"DELETE FROM {_C} WHERE name = %s",
                        "DELETE FROM semsearch_sync_state WHERE collection = %s",
                        "DELETE FROM semsearch_rejects WHERE collection = %s",
                        "DELETE FROM semsearch_event_versions WHERE collection = %s"):
                c.execute(sql, (name,))

        self._run(drop, "dropping a collection")

    # -- aliases ---------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        row = self._one("SELECT target FROM semsearch_aliases WHERE alias = %s", (name,))
        return str(row[0]) if row else name

    def get_alias(self, alias: str) -> tuple[str, list[str]] | None:
        row = self._one("SELECT target, history FROM semsearch_aliases WHERE alias = %s",
                        (alias,))
        return None if row is None else (str(row[0]), list(row[1]))

    def list_aliases(self) -> dict[str, tuple[str, list[str]]]:
        rows = self._all("SELECT alias, target, history FROM semsearch_aliases")
        return {r[0]: (r[1], list(r[2])) for r in rows}

    def set_alias(self, alias: str, target: str, expected: str, history: Sequence[str],
                  carry_sync_state: bool = True) -> None:
        """Compare-and-swap in one transaction, the sync ledger moving with the name."""
        def swap(c: Any) -> None:
            c.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                      (schema.LOCK_CLASS + _LOCK_ALIAS, alias))
            row = c.execute("SELECT target FROM semsearch_aliases WHERE alias = %s",
                            (alias,)).fetchone()
            current = str(row[0]) if row else alias
            if current != expected:
                raise InputError(f"collection {alias!r} now points at {current!r}, not "
                                 f"{expected!r}: another swap happened; nothing changed")
            if c.execute(f"SELECT 1 FROM {_C} WHERE name = %s", (target,)).fetchone() is None:
                raise NotFoundError(f"unknown collection version {target!r}")
            c.execute("INSERT INTO semsearch_aliases (alias, target, history, updated_at) "
                      "VALUES (%s, %s, %s::jsonb, now()) ON CONFLICT (alias) DO UPDATE SET "
                      "target = excluded.target, history = excluded.history, "
                      "updated_at = excluded.updated_at",
                      (alias, target, _json(list(history))))
            if carry_sync_state and current != target:
                c.execute("DELETE FROM semsearch_sync_state WHERE collection = %s", (target,))
                c.execute("INSERT INTO semsearch_sync_state (collection, source, spec, "
                          "position, updated_at) SELECT %s, source, spec, position, updated_at "
                          "FROM semsearch_sync_state WHERE collection = %s", (target, current))
                c.execute("DELETE FROM semsearch_rejects WHERE collection = %s", (target,))
                c.execute("INSERT INTO semsearch_rejects (collection, doc_id, reason, seen_at) "
                          "SELECT %s, doc_id, reason, seen_at FROM semsearch_rejects "
                          "WHERE collection = %s", (target, current))
                c.execute("INSERT INTO semsearch_event_versions (collection, doc_id, version) "
                          "SELECT %s, doc_id, version FROM semsearch_event_versions WHERE "
                          "collection = %s ON CONFLICT (collection, doc_id) DO UPDATE SET "
                          "version = greatest(semsearch_event_versions.version, "
                          "excluded.version)", (target, current))

        self._run(swap, "swapping an alias")

    def drop_alias(self, alias: str) -> None:
        self._run(lambda c: c.execute("DELETE FROM semsearch_aliases WHERE alias = %s",
                                      (alias,)), "dropping an alias")

    # -- documents -------------------------------------------------------------------------
    def content_hashes(self, collection: str, doc_ids: Sequence[str]) -> dict[str, str]:
        if not doc_ids:
            return {}
        rows = self._all(f"SELECT id, content_hash FROM {_D} WHERE collection = %s "
                         "AND id = ANY(%s::text[])", (collection, list(doc_ids)))
        return {r[0]: r[1] for r in rows}

    def write(self, collection: str, writes: Sequence[DocumentWrite],
              deletes: Sequence[str] = (), ledger: LedgerUpdate | None = None) -> WriteResult:
        """One transaction, serialized per collection by the lock on its row: replaced
        documents lose their old chunks, deletes cascade, the ledger moves with the batch. A
        write that changes no document leaves the generation alone."""
        for w in writes:
            _check_storable(w)
        # The same id twice in one batch: the last one wins, as a replace would.
        last = {w.document.id: w for w in writes}
        writes = list(last.values())
        docs_rows = [(w.document.id, w.document.title, w.document.text,
                      _json(dict(w.document.metadata)), w.content_hash,
                      np.ascontiguousarray(w.doc_vector, dtype=np.float32).tobytes())
                     for w in writes]
        chunks = [ch for w in writes for ch in w.chunks]

        def tx(c: Any) -> WriteResult:
            row = c.execute(f"SELECT generation FROM {_C} WHERE name = %s FOR UPDATE",
                            (collection,)).fetchone()
            if row is None:
                raise NotFoundError(f"unknown collection {collection!r}")
            generation = int(row[0])
            if ledger is not None and ledger.versions:
                _claim_versions(c, collection, ledger.versions)
            touched = list(dict.fromkeys([*last, *deletes]))
            removed = sorted(int(r[0]) for r in c.execute(
                f"DELETE FROM {_K} WHERE collection = %s AND doc_id = ANY(%s::text[]) "
                "RETURNING label", (collection, touched))) if touched else []
            deleted = c.execute(f"DELETE FROM {_D} WHERE collection = %s AND id = ANY("
                                "%s::text[])", (collection, list(deletes))).rowcount \
                if deletes else 0
            existing = 0
            if docs_rows:
                existing = int(c.execute(
                    f"SELECT count(*) FROM {_D} WHERE collection = %s AND id = ANY(%s::text[])",
                    (collection, list(last))).fetchone()[0])
                cols = list(zip(*docs_rows, strict=True))
                c.execute(
                    f"INSERT INTO {_D} (collection, id, title, text, metadata, content_hash, "
                    "doc_vector, updated_at) SELECT %s, i, t, x, m::jsonb, h, v, now() FROM "
                    "unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], "
                    "%s::bytea[]) AS u(i, t, x, m, h, v) ON CONFLICT (collection, id) DO "
                    "UPDATE SET title = excluded.title, text = excluded.text, metadata = "
                    "excluded.metadata, content_hash = excluded.content_hash, doc_vector = "
                    "excluded.doc_vector, updated_at = excluded.updated_at",
                    (collection, *(list(col) for col in cols)))
            added: list[tuple[int, Chunk]] = []
            if chunks:
                labels = dict(c.execute(
                    f'INSERT INTO {_K} (collection, chunk_id, doc_id, ordinal, text, start, '
                    '"end", title) SELECT %s, i, d, o, x, s, e, t FROM unnest(%s::text[], '
                    "%s::text[], %s::int[], %s::text[], %s::int[], %s::int[], %s::text[]) "
                    "WITH ORDINALITY AS u(i, d, o, x, s, e, t, n) ORDER BY n "
                    "RETURNING chunk_id, label",
                    (collection, [ch.id for ch in chunks], [ch.doc_id for ch in chunks],
                     [ch.ordinal for ch in chunks], [ch.text for ch in chunks],
                     [ch.start for ch in chunks], [ch.end for ch in chunks],
                     [ch.title for ch in chunks])).fetchall())
                added = [(int(labels[ch.id]), ch) for ch in chunks]
            if ledger is not None:
                _write_ledger(c, collection, [*last, *deletes], ledger)
            if not writes and not deleted:
                return WriteResult(added=[], removed=[], generation=generation)
            generation += 1
            new_docs = len(writes) - existing - deleted
            c.execute(f"UPDATE {_C} SET generation = %s, documents = documents + %s, "
                      "chunks = chunks + %s WHERE name = %s",
                      (generation, new_docs, len(added) - len(removed), collection))
            return WriteResult(added=added, removed=removed, generation=generation)

        return self._run(tx, "a write")

    def get_document(self, collection: str, doc_id: str) -> dict[str, Any]:
        row = self._one(f"SELECT id, title, text, metadata, content_hash FROM {_D} "
                        "WHERE collection = %s AND id = %s", (collection, doc_id))
        if row is None:
            raise NotFoundError(f"no document {doc_id!r} in collection {collection!r}")
        return {"id": row[0], "title": row[1], "text": row[2], "metadata": row[3],
                "content_hash": row[4]}

    def all_doc_ids(self, collection: str) -> list[str]:
        return [r[0] for r in self._all(
            f"SELECT id FROM {_D} WHERE collection = %s ORDER BY id",
            (collection,))]

    def iter_documents(self, collection: str, batch: int = 500) -> Iterator[list[Document]]:
        """Every document in id order (code points, as SQLite orders), in pages."""
        last: str | None = None
        while True:
            after = "" if last is None else "AND id > %s "
            rows = self._all(
                f"SELECT id, title, text, metadata FROM {_D} WHERE collection = %s {after}"
                "ORDER BY id LIMIT %s",
                (collection, batch) if last is None else (collection, last, batch))
            if not rows:
                return
            last = rows[-1][0]
            yield [Document(id=r[0], title=r[1], text=r[2], metadata=r[3]) for r in rows]

    _CHUNK_COLS = (f'SELECT c.label, c.chunk_id, c.doc_id, c.ordinal, c.text, c.start, c."end", '
                   f"c.title, d.metadata FROM {_K} c JOIN {_D} d "
                   "ON d.collection = c.collection AND d.id = c.doc_id ")

    def chunks_by_label(self, collection: str, labels: Sequence[int]) -> dict[int, StoredChunk]:
        if not labels:
            return {}
        return _chunks(self._all(self._CHUNK_COLS + "WHERE c.collection = %s AND "
                                 "c.label = ANY(%s::bigint[])",
                                 (collection, [int(x) for x in labels])))

    def doc_ids_by_label(self, collection: str, labels: Sequence[int]) -> dict[int, str]:
        if not labels:
            return {}
        return {int(r[0]): r[1] for r in self._all(
            f"SELECT label, doc_id FROM {_K} WHERE collection = %s AND "
            "label = ANY(%s::bigint[])", (collection, [int(x) for x in labels]))}

    def iter_chunks(self, collection: str, batch: int = 1000) -> Iterator[list[StoredChunk]]:
        last = -1
        while True:
            rows = self._all(self._CHUNK_COLS + "WHERE c.collection = %s AND c.label > %s "
                             "ORDER BY c.label LIMIT %s", (collection, last, batch))
            if not rows:
                return
            chunks = list(_chunks(rows).values())
            last = chunks[-1].label
            yield chunks

    def doc_vectors(self, collection: str, doc_ids: Sequence[str]) -> dict[str, Vectors]:
        # An id holding NUL was never stored (writes refuse it) and cannot be a parameter.
        ids = [i for i in dict.fromkeys(doc_ids) if "\x00" not in i]
        if not ids:
            return {}
        return {r[0]: np.frombuffer(bytes(r[1]), dtype=np.float32).copy() for r in self._all(
            f"SELECT id, doc_vector FROM {_D} WHERE collection = %s AND id = ANY(%s::text[])",
            (collection, ids)) if r[1] is not None}

    def labels_matching(self, collection: str, filt: Filter) -> set[int]:
        where, params = compile_filter(filt)
        rows = self._all(f"SELECT c.label FROM {_K} c JOIN {_D} d ON d.collection = "
                         f"c.collection AND d.id = c.doc_id WHERE c.collection = %s AND {where}",
                         [collection, *params])
        return {int(r[0]) for r in rows}

    # -- sync ledger -----------------------------------------------------------------------
    def sync_state(self, collection: str) -> SyncState | None:
        row = self._one("SELECT source, spec, position, updated_at FROM semsearch_sync_state "
                        "WHERE collection = %s", (collection,))
        if row is None:
            return None
        return SyncState(source=row[0], spec=row[1], position=row[2], updated_at=_iso(row[3]))

    def rejects(self, collection: str) -> dict[str, str]:
        return {r[0]: r[1] for r in self._all(
            "SELECT doc_id, reason FROM semsearch_rejects WHERE collection = %s "
            "ORDER BY doc_id", (collection,))}

    def event_versions(self, collection: str, doc_ids: Sequence[str]) -> dict[str, int]:
        if not doc_ids:
            return {}
        return {r[0]: int(r[1]) for r in self._all(
            "SELECT doc_id, version FROM semsearch_event_versions WHERE collection = %s AND "
            "doc_id = ANY(%s::text[])", (collection, list(doc_ids)))}

    # -- run log ---------------------------------------------------------------------------
    def record_run(self, collection: str, kind: str, started_at: str, status: str,
                   stats: Mapping[str, Any]) -> int:
        """Run history survives collection drops: it is what the run cost."""
        return int(self._run(lambda c: c.execute(
            "INSERT INTO semsearch_runs (collection, kind, started_at, finished_at, status, "
            "stats) VALUES (%s, %s, %s, %s, %s, %s::json) RETURNING id",
            (collection, kind, started_at, _iso(datetime.now(UTC)), status,
             _json(dict(stats)))).fetchone()[0], "recording a run"))

    def start_run(self, collection: str, kind: str, started_at: str) -> int:
        return int(self._run(lambda c: c.execute(
            "INSERT INTO semsearch_runs (collection, kind, started_at, finished_at, status, "
            "stats) VALUES (%s, %s, %s, '', 'running', '{}') RETURNING id",
            (collection, kind, started_at)).fetchone()[0], "starting a run"))

    def finish_run(self, run_id: int, status: str, stats: Mapping[str, Any]) -> None:
        self._run(lambda c: c.execute(
            "UPDATE semsearch_runs SET finished_at = %s, status = %s, stats = %s::json "
            "WHERE id = %s", (_iso(datetime.now(UTC)), status, _json(dict(stats)), run_id)),
            "finishing a run")

    def mark_interrupted(self, collection: str, kind: str) -> int:
        return int(self._run(lambda c: c.execute(
            "UPDATE semsearch_runs SET status = 'interrupted' WHERE collection = %s AND "
            "kind = %s AND status = 'running'", (collection, kind)).rowcount,
            "marking interrupted runs"))

    def list_runs(self, collection: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        where, params = ("WHERE collection = %s", [collection]) if collection else ("", [])
        rows = self._all("SELECT id, collection, kind, started_at, finished_at, status, stats "
                         f"FROM semsearch_runs {where} ORDER BY id DESC LIMIT %s",
                         [*params, limit])
        return [{"id": r[0], "collection": r[1], "kind": r[2], "started_at": r[3],
                 "finished_at": r[4], "status": r[5], "stats": r[6]} for r in rows]

    # -- search defaults (semsearch tune) -----------------------------------------------------
    def search_settings(self, collection: str) -> list[SettingsRevision]:
        rows = self._all("SELECT collection, revision, settings, note, created_at, "
                         "reverted_at FROM semsearch_search_settings WHERE collection = %s "
                         "ORDER BY revision", (collection,), "reading search defaults")
        return [SettingsRevision(r[0], int(r[1]), r[2], r[3], _iso(r[4]),
                                 None if r[5] is None else _iso(r[5])) for r in rows]

    def add_search_settings(self, collection: str, settings: Mapping[str, Any],
                            note: Mapping[str, Any]) -> SettingsRevision:
        """A new revision, numbered after every earlier one; two at once serialize on a
        transaction-level advisory lock on the name (the first has no row to lock)."""
        def tx(c: Any) -> SettingsRevision:
            c.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                      (schema.LOCK_CLASS + _LOCK_SETTINGS, collection))
            row = c.execute(
                "INSERT INTO semsearch_search_settings (collection, revision, settings, note) "
                "SELECT %s, coalesce(max(revision), 0) + 1, %s::jsonb, %s::jsonb FROM "
                "semsearch_search_settings WHERE collection = %s "
                "RETURNING revision, settings, note, created_at",
                (collection, _json(dict(settings)), _json(dict(note)), collection)).fetchone()
            return SettingsRevision(collection, int(row[0]), row[1], row[2], _iso(row[3]))

        return self._run(tx, "storing search defaults")

    def revert_search_settings(self, collection: str) -> SettingsRevision | None:
        def tx(c: Any) -> None:
            c.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                      (schema.LOCK_CLASS + _LOCK_SETTINGS, collection))
            done = c.execute(
                "UPDATE semsearch_search_settings SET reverted_at = now() WHERE collection = "
                "%s AND revision = (SELECT max(revision) FROM semsearch_search_settings "
                "WHERE collection = %s AND reverted_at IS NULL)",
                (collection, collection)).rowcount
            if not done:
                raise InputError(f"collection {collection!r} has no tuned search defaults to "
                                 "revert: it uses the built-in ones")

        self._run(tx, "reverting search defaults")
        live = [r for r in self.search_settings(collection) if r.reverted_at is None]
        return live[-1] if live else None

    # -- artifacts (content-addressed: a query adapter) -------------------------------------
    def put_artifact(self, key: str, data: bytes) -> None:
        self._run(lambda c: c.execute(
            "INSERT INTO semsearch_artifacts (key, data) VALUES (%s, %s) "
            "ON CONFLICT (key) DO NOTHING", (key, data)), "storing an artifact")

    def get_artifact(self, key: str) -> bytes | None:
        row = self._one("SELECT data FROM semsearch_artifacts WHERE key = %s", (key,))
        return None if row is None else bytes(row[0])

    # -- upkeep ----------------------------------------------------------------------------
    def disk_usage(self) -> dict[str, int]:
        """Bytes of the store's tables (with indexes and TOAST), and the share of them dead
        rows hold, which VACUUM makes reusable."""
        rows = self._all(
            "SELECT pg_total_relation_size(c.oid), coalesce(s.n_live_tup, 0), "
            "coalesce(s.n_dead_tup, 0) FROM pg_class c LEFT JOIN pg_stat_user_tables s "
            "ON s.relid = c.oid WHERE c.oid = ANY(%s::regclass[])", (list(_TABLES),))
        total = sum(int(r[0]) for r in rows)
        dead = sum(int(r[0]) * int(r[2]) // max(1, int(r[1]) + int(r[2])) for r in rows)
        return {"bytes": total, "reclaimable_bytes": dead}

    def vacuum(self) -> None:
        """VACUUM (ANALYZE), not FULL: it takes no lock that would stop searches and writes
        on other machines; the space it frees is reused by later writes."""
        with self._errors("vacuum"), self._db.connection() as conn:
            conn.execute(f"VACUUM (ANALYZE) {', '.join(_TABLES)}")

    def close(self) -> None:
        if self._owns_db:
            self._db.close()


def _info(row: Any) -> CollectionInfo:
    return CollectionInfo(name=row[0], identity=EmbedderIdentity.from_dict(row[1]),
                          chunker=row[2], documents=int(row[5]), chunks=int(row[6]),
                          generation=int(row[3]), created_at=_iso(row[4]))


def _chunks(rows: Any) -> dict[int, StoredChunk]:
    out: dict[int, StoredChunk] = {}
    for label, chunk_id, doc_id, ordinal, text, start, end, title, meta in rows:
        out[int(label)] = StoredChunk(
            label=int(label), chunk=Chunk(id=chunk_id, doc_id=doc_id, ordinal=ordinal,
                                          text=text, start=start, end=end, title=title),
            metadata=meta)
    return out


def _claim_versions(c: Any, collection: str, versions: Mapping[str, int]) -> None:
    """Each id's row moves only to a newer version (an upsert that blocks on a concurrent
    writer's row until it commits, then re-checks): an id whose row did not move lost a race,
    and the whole batch is refused (rolled back with the transaction)."""
    ids, values = list(versions), list(versions.values())
    moved = {r[0] for r in c.execute(
        "INSERT INTO semsearch_event_versions (collection, doc_id, version) SELECT %s, i, v "
        "FROM unnest(%s::text[], %s::bigint[]) AS u(i, v) ON CONFLICT (collection, doc_id) "
        "DO UPDATE SET version = excluded.version WHERE semsearch_event_versions.version < "
        "excluded.version RETURNING doc_id", (collection, ids, values)).fetchall()}
    if len(moved) < len(ids):
        raise StaleWriteError(sorted(i for i in ids if i not in moved))


def _write_ledger(c: Any, collection: str, done: list[str], ledger: LedgerUpdate) -> None:
    """In the reference store's order: refusals of rows now written or deleted go, new ones
    replace old ones, then rows gone from the source lose theirs; the watermark moves only
    when the batch carries one."""
    if done:
        c.execute("DELETE FROM semsearch_rejects WHERE collection = %s AND "
                  "doc_id = ANY(%s::text[])", (collection, done))
    if ledger.rejected:
        c.execute("INSERT INTO semsearch_rejects (collection, doc_id, reason, seen_at) "
                  "SELECT %s, i, r, now() FROM unnest(%s::text[], %s::text[]) AS u(i, r) "
                  "ON CONFLICT (collection, doc_id) DO UPDATE SET reason = excluded.reason, "
                  "seen_at = excluded.seen_at",
                  (collection, list(ledger.rejected), list(ledger.rejected.values())))
    if ledger.gone:
        c.execute("DELETE FROM semsearch_rejects WHERE collection = %s AND "
                  "doc_id = ANY(%s::text[])", (collection, list(ledger.gone)))
    if ledger.position is not None or ledger.spec is not None:
        c.execute(
            "INSERT INTO semsearch_sync_state (collection, source, spec, position, updated_at) "
            "VALUES (%s, %s, %s::jsonb, %s::jsonb, now()) ON CONFLICT (collection) DO UPDATE "
            "SET source = excluded.source, spec = excluded.spec, position = "
            "COALESCE(excluded.position, semsearch_sync_state.position), "
            "updated_at = excluded.updated_at",
            (collection, ledger.source, _json(dict(ledger.spec or {})),
             None if ledger.position is None else _json(dict(ledger.position))))


# -- filters ---------------------------------------------------------------------------------
# The value of a field as a number, the way Python's comparisons see it: a JSON number, or a
# boolean as 1/0 (True == 1 and True > 0 in Python); NULL for anything else.
_NUM = ("(CASE jsonb_typeof(d.metadata -> %s) WHEN 'number' THEN (d.metadata -> %s)::numeric "
        "WHEN 'boolean' THEN ((d.metadata -> %s)::boolean)::int::numeric END)")
# The value as text when it is a JSON string; NULL for anything else.
_STR = "(CASE jsonb_typeof(d.metadata -> %s) WHEN 'string' THEN d.metadata ->> %s END)"


def _number(value: Any) -> str:
    """A number as exact decimal text: floats by their shortest repr, which compares (as a
    decimal) the way the float does against every other float."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return str(Decimal(repr(value)))
    return str(int(value))


def compile_filter(filt: Filter) -> tuple[str, list[Any]]:
    """Filter -> SQL over the documents' jsonb metadata with the semantics of
    ``filters.matches``; every value and field name is a parameter."""
    clauses: list[str] = []
    params: list[Any] = []
    for cond in filt.conditions:
        f = cond.field
        if cond.op in ("eq", "in"):
            values = cond.value if cond.op == "in" else (cond.value,)
            if any(isinstance(v, dict | list | tuple) or v is None for v in values):
                raise InputError(f"filter {f!r}: compare to a scalar, not {cond.value!r}")
            strs = [v for v in values if isinstance(v, str)]
            nums = [_number(v) for v in values if not isinstance(v, str)]
            parts: list[str] = []
            if strs:
                parts.append(f'{_STR} COLLATE "C" = ANY(%s::text[])')
                params += [f, f, strs]
            if nums:
                parts.append(f"{_NUM} = ANY(%s::numeric[])")
                params += [f, f, f, nums]
            clauses.append("(" + " OR ".join(parts) + ")")
        else:
            sql_op = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[cond.op]
            if isinstance(cond.value, str):
                # code point order, like Python's str comparison (UTF-8 bytes sort so)
                clauses.append(f'({_STR} COLLATE "C" {sql_op} %s::text COLLATE "C")')
                params += [f, f, cond.value]
            elif isinstance(cond.value, int | float):
                clauses.append(f"({_NUM} {sql_op} %s::numeric)")
                params += [f, f, f, _number(cond.value)]
            else:
                raise InputError(f"filter {f!r} {cond.op!r} needs a number or string")
    return (" AND ".join(clauses) or "TRUE"), params

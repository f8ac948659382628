"""The canonical store's schema on PostgreSQL, as numbered migrations.

Every table is prefixed ``semsearch_`` so semsearch can share a database with anything else.
``semsearch_schema`` records each applied migration. Migrating takes a transaction-level
advisory lock first, so two processes starting against a new database at once (two replicas,
a server and a CronJob) apply each migration exactly once; the second waits, then finds
nothing left to do. A migration and its bookkeeping commit together or not at all.

Migrations are append-only: a released one is never edited, a change is a new entry, so a
database created by any older semsearch upgrades in place."""

from __future__ import annotations

from typing import Any

from semsearch.adapters.postgres.db import Database
from semsearch.errors import BackendError

VERSION_TABLE = "semsearch_schema"
# pg_advisory_xact_lock(classid, objid): the two-key space, apart from single-key locks.
LOCK_CLASS = 0x5E55  # "semsearch"
LOCK_MIGRATE = 1

MIGRATIONS: list[list[str]] = [
    # 1: the store's tables
    [
        "CREATE EXTENSION IF NOT EXISTS vector",
        """CREATE TABLE IF NOT EXISTS semsearch_collections (
    name text COLLATE "C" PRIMARY KEY,
    identity jsonb NOT NULL,
    chunker jsonb NOT NULL,
    generation bigint NOT NULL DEFAULT 0,
    documents bigint NOT NULL DEFAULT 0,
    chunks bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
)""",
        """CREATE TABLE IF NOT EXISTS semsearch_documents (
    collection text COLLATE "C" NOT NULL
        REFERENCES semsearch_collections (name) ON DELETE CASCADE,
    id text COLLATE "C" NOT NULL,
    title text NOT NULL,
    text text NOT NULL,
    metadata jsonb NOT NULL,
    content_hash text NOT NULL,
    doc_vector bytea,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, id)
)""",
        """CREATE TABLE IF NOT EXISTS semsearch_chunks (
    label bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection text COLLATE "C" NOT NULL,
    chunk_id text NOT NULL,
    doc_id text COLLATE "C" NOT NULL,
    ordinal integer NOT NULL,
    text text NOT NULL,
    start integer NOT NULL,
    "end" integer NOT NULL,
    title text NOT NULL,
    UNIQUE (collection, chunk_id),
    FOREIGN KEY (collection, doc_id) REFERENCES semsearch_documents (collection, id)
        ON DELETE CASCADE
)""",
        "CREATE INDEX IF NOT EXISTS semsearch_chunks_by_doc ON semsearch_chunks "
        "(collection, doc_id)",
        """CREATE TABLE IF NOT EXISTS semsearch_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    collection text NOT NULL,
    kind text NOT NULL,
    started_at text NOT NULL,
    finished_at text NOT NULL,
    status text NOT NULL,
    stats json NOT NULL
)""",
        """CREATE TABLE IF NOT EXISTS semsearch_sync_state (
    collection text PRIMARY KEY,
    source text NOT NULL,
    spec jsonb NOT NULL,
    position jsonb,
    updated_at timestamptz NOT NULL DEFAULT now()
)""",
        """CREATE TABLE IF NOT EXISTS semsearch_aliases (
    alias text PRIMARY KEY,
    target text NOT NULL,
    history jsonb NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT now()
)""",
        """CREATE TABLE IF NOT EXISTS semsearch_rejects (
    collection text COLLATE "C" NOT NULL,
    doc_id text COLLATE "C" NOT NULL,
    reason text NOT NULL,
    seen_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (collection, doc_id)
)""",
        """CREATE TABLE IF NOT EXISTS semsearch_api_keys (
    name text PRIMARY KEY,
    sha256 text NOT NULL,
    scopes jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)""",
    ],
    # 2: `semsearch runs -c NAME` and the interrupted-run sweep read one collection's runs,
    # newest first; without this they scan the whole history.
    [
        "CREATE INDEX IF NOT EXISTS semsearch_runs_by_collection ON semsearch_runs "
        "(collection, id)",
    ],
    # 3: change events (`semsearch consume`): the last applied version of each id, deleted
    # ids included, so a late or redelivered event changes nothing.
    [
        """CREATE TABLE IF NOT EXISTS semsearch_event_versions (
    collection text COLLATE "C" NOT NULL,
    doc_id text COLLATE "C" NOT NULL,
    version bigint NOT NULL,
    PRIMARY KEY (collection, doc_id)
)""",
    ],
    # 4: `semsearch tune`: a collection name's search defaults, one row per revision (kept,
    # so a tuning can be reverted); the live one is the newest not reverted.
    [
        """CREATE TABLE IF NOT EXISTS semsearch_search_settings (
    collection text COLLATE "C" NOT NULL,
    revision integer NOT NULL,
    settings jsonb NOT NULL,
    note jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    reverted_at timestamptz,
    PRIMARY KEY (collection, revision)
)""",
    ],
    # 5: `semsearch adapt`: content-addressed artifacts (a collection's query adapter), so
    # every replica serving an adapted collection finds the weights its identity names.
    [
        """CREATE TABLE IF NOT EXISTS semsearch_artifacts (
    key text PRIMARY KEY,
    data bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
)""",
    ],
]
LATEST = len(MIGRATIONS)

_VERSION_DDL = (f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())")


def _version(conn: Any) -> int:
    # pg_class read with the statement's snapshot, not to_regclass: that answers from the
    # session's catalog cache, which still says "no such table" when another process created
    # it while this one waited for the migration lock.
    if not conn.execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN "
                        "pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE "
                        "c.relname = %s AND n.nspname = current_schema())",
                        (VERSION_TABLE,)).fetchone()[0]:
        return 0
    return int(conn.execute(f"SELECT coalesce(max(version), 0) FROM {VERSION_TABLE}")
               .fetchone()[0])


def current_version(db: Database) -> int:
    """The newest migration applied to the database (0: none, a new database)."""
    with db.connection() as conn:
        return _version(conn)


def _pending(version: int, target: int, shown: str) -> list[int]:
    if version > LATEST:
        raise BackendError(f"the semsearch schema at {shown} is at version {version}, newer "
                           f"than this semsearch knows ({LATEST}); upgrade semsearch")
    return list(range(version + 1, target + 1))


def migrate(db: Database, dry_run: bool = False, target: int | None = None) -> list[str]:
    """Apply the migrations the database lacks (up to ``target``, default all) and return
    their SQL; with ``dry_run`` only return it, changing nothing."""
    target = LATEST if target is None else target
    if dry_run:
        with db.connection() as conn:
            steps = _pending(_version(conn), target, db.shown)
        bookkeeping = [_VERSION_DDL] if steps and steps[0] == 1 else []
        return bookkeeping + [sql for n in steps for sql in MIGRATIONS[n - 1]]

    def apply(conn: Any) -> list[str]:
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, LOCK_MIGRATE))
        ran: list[str] = []
        version = _version(conn)  # read after the lock: another process may have migrated
        steps = _pending(version, target, db.shown)
        if steps and version == 0:
            conn.execute(_VERSION_DDL)
            ran.append(_VERSION_DDL)
        for n in steps:
            for sql in MIGRATIONS[n - 1]:
                _execute(conn, sql, db.shown)
                ran.append(sql)
            conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (n,))
        return ran

    return db.run(apply, what="the schema migration")


def _execute(conn: Any, sql: str, shown: str) -> None:
    import psycopg

    try:
        conn.execute(sql)
    except psycopg.Error as exc:
        if sql.startswith("CREATE EXTENSION"):
            # 58P01: no control file (pgvector not installed); 42501: not allowed to create it
            raise BackendError(
                f"PostgreSQL at {shown} cannot enable the pgvector extension ({sql.split()[-1]}): "
                f"{str(exc).strip().splitlines()[0]}; install pgvector on the server (e.g. the "
                "postgresql-NN-pgvector package, or a managed database that offers it), or "
                "have an administrator run CREATE EXTENSION vector in this database") from None
        raise BackendError(f"migrating the semsearch schema at {shown} failed: "
                           f"{str(exc).strip().splitlines()[0]}") from None

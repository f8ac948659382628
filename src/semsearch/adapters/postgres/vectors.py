"""``VectorIndex`` over pgvector: one table per collection version (label, embedding) with an
HNSW index on inner product, which on unit vectors is cosine (score = -(a <#> b)).

Rows are the authority and the HNSW index a structure PostgreSQL maintains beside them, so
anything the graph cannot answer is answered exactly from the rows: a narrow ``allowed`` set
(a few thousand labels, or under a tenth of the rows) is scored directly, never through the
graph, and a wide one goes through the graph with pgvector 0.8's iterative scans; whenever
the graph returns fewer than k rows while more exist, the exact query answers instead.

Writes are durable when they return (other processes see them at once), but ``generation``
stays the one recorded by the last ``save``: a crash between a write and its save leaves the
recorded generation behind the store's, which tells the next reader to rebuild."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import sql

from semsearch.adapters.postgres import derived
from semsearch.adapters.postgres.db import Database
from semsearch.adapters.vectors.checks import check_query, refuse_where, upsert_batch
from semsearch.core.filters import Filter
from semsearch.errors import BackendError, InputError
from semsearch.ports import ChunkPayload, Vectors

log = logging.getLogger(__name__)
Hits = list[tuple[int, float]]
KIND = "vector"
_OPS = {"vector": "vector_ip_ops", "halfvec": "halfvec_ip_ops"}
_MAX_EF = 1000  # pgvector's upper bound for hnsw.ef_search


def vector_table(collection: str) -> str:
    return derived.table_name("vec", collection)


def register(conn: Any) -> None:
    """pgvector's adapters on this connection: the pool registers them when a connection
    opens, which misses connections opened before the extension was created."""
    if conn.adapters.types.get("vector") is None:
        from pgvector.psycopg import register_vector

        register_vector(conn)


class PgVectorIndex:
    filters = False  # filtered through the store's allowed labels

    def __init__(self, db: Database, collection: str, dimension: int, *,
                 vector_type: str = "vector", ef_search: int = 256, m: int = 16,
                 ef_construction: int = 128, filter_exact_below: int = 2000,
                 filter_exact_fraction: float = 0.1, max_scan_tuples: int = 50000,
                 always_graph: bool = False) -> None:
        if dimension <= 0:
            raise InputError(f"vector dimension must be positive, got {dimension}")
        if vector_type not in _OPS:
            raise InputError(f"vector type must be one of {sorted(_OPS)}, got {vector_type!r}")
        self._db = db
        self._collection = collection
        self._dim = dimension
        self._type = vector_type
        self.ef_search = ef_search
        self.filter_exact_below = filter_exact_below
        self.filter_exact_fraction = filter_exact_fraction
        self.max_scan_tuples = max_scan_tuples
        # On a small table PostgreSQL rightly prefers scanning every row to walking the graph
        # (below ~10,000 rows of 384 dimensions it is as fast, and exact); ``always_graph``
        # makes it walk the graph anyway, so tests and benchmarks measure the graph.
        self.always_graph = always_graph
        self._m = m
        self._ef_construction = ef_construction
        self.table = vector_table(collection)
        self._t = derived.ident(self.table)
        # The query vector travels as ``vector``; a halfvec column compares against halfvec.
        self._q = sql.SQL("%s::halfvec" if vector_type == "halfvec" else "%s::vector")
        derived.run(self._db, self._setup, "creating a vector index")

    # -- schema ----------------------------------------------------------------------------

    def _setup(self, conn: Any) -> None:
        derived.ddl_lock(conn)
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
            self._create_extension(conn)
        derived.ensure_state_table(conn)
        want = f"{self._type}({self._dim})"
        row = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                           "WHERE attrelid = to_regclass(%s) AND attname = 'embedding'",
                           (self.table,)).fetchone()
        if row is not None and row[0] != want:
            log.warning("vector table %s holds %s, not %s; it will be rebuilt",
                        self.table, row[0], want)
            conn.execute(sql.SQL("DROP TABLE {}").format(self._t))
            derived.forget_generation(conn, self._collection, KIND)
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (label BIGINT PRIMARY KEY, "
                             "embedding {} NOT NULL)").format(self._t, sql.SQL(want)))
        conn.execute(sql.SQL(
            "CREATE INDEX IF NOT EXISTS {} ON {} USING hnsw (embedding {}) "
            "WITH (m = {}, ef_construction = {})").format(
                derived.ident(f"{self.table}_hnsw"), self._t, sql.SQL(_OPS[self._type]),
                sql.Literal(self._m), sql.Literal(self._ef_construction)))

    def _create_extension(self, conn: Any) -> None:
        import psycopg

        if conn.execute("SELECT 1 FROM pg_available_extensions "
                        "WHERE name = 'vector'").fetchone() is None:
            raise BackendError(
                f"PostgreSQL at {self._db.shown} has no pgvector extension; install pgvector "
                "on the server (e.g. the postgresql-NN-pgvector package, or a managed "
                "database that offers it)")
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except psycopg.errors.InsufficientPrivilege as exc:
            raise BackendError(
                f"the pgvector extension is not enabled in the database at {self._db.shown} "
                f"and this user may not enable it ({str(exc).strip()}); run CREATE EXTENSION "
                "vector as its owner") from None

    # -- VectorIndex -----------------------------------------------------------------------

    @property
    def missing(self) -> bool:
        return False  # recreated where it is opened; a gap in generation says rebuild

    def refusal(self, payload: ChunkPayload) -> str | None:
        return None  # keeps no payload

    @property
    def generation(self) -> int:
        return derived.read_generation(self._db, self._collection, KIND)

    def __len__(self) -> int:
        with derived.connection(self._db, "using a derived index") as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self._t)).fetchone()
        return int(row[0]) if row else 0

    def add(self, labels: Sequence[int], vectors: Vectors,
            payloads: Sequence[ChunkPayload] | None = None) -> None:
        """Insert or replace (upsert) vectors; within one batch the last duplicate wins.
        Rows are copied into a staging table and upserted in one statement, so two writers
        of one label cannot collide on the primary key."""
        batch = upsert_batch(labels, vectors, self._dim)
        if batch is None:
            return
        labs, vecs = batch
        rows = list(zip(labs.tolist(), vecs, strict=True))
        cast = sql.SQL("::halfvec" if self._type == "halfvec" else "")

        def write(conn: Any) -> None:
            register(conn)
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS semsearch_stage_vec "
                         "(label BIGINT, embedding vector) ON COMMIT DELETE ROWS")
            with conn.cursor().copy("COPY semsearch_stage_vec (label, embedding) "
                                    "FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "vector"])
                for row in rows:
                    copy.write_row(row)
            conn.execute(sql.SQL(
                "INSERT INTO {} (label, embedding) SELECT label, embedding{} "
                "FROM semsearch_stage_vec ON CONFLICT (label) DO UPDATE "
                "SET embedding = EXCLUDED.embedding").format(self._t, cast))

        derived.run(self._db, write, "adding vectors")

    def remove(self, labels: Iterable[int]) -> None:
        labs = [int(x) for x in labels]
        if not labs:
            return
        derived.run(self._db, lambda conn: conn.execute(
            sql.SQL("DELETE FROM {} WHERE label = ANY(%s::bigint[])").format(self._t),
            (labs,)), "removing vectors")

    def search(self, query: Vectors, k: int, allowed: set[int] | None = None,
               where: Filter | None = None) -> list[tuple[int, float]]:
        refuse_where(where)
        vec = check_query(query, self._dim)
        if k <= 0 or (allowed is not None and not allowed):
            return []
        labs = None if allowed is None else [int(x) for x in allowed]
        if labs is not None and (len(labs) <= self.filter_exact_below
                                 or len(labs) < self.filter_exact_fraction * self._rows()):
            return self._exact(vec, k, labs)
        if k > _MAX_EF:
            return self._exact(vec, k, labs)
        hits = self._ann(vec, k, labs)
        if len(hits) < k and len(hits) < self._count(labs):
            return self._exact(vec, k, labs)
        return hits

    def _rows(self) -> float:
        """The planner's row estimate when it has one (no scan), else an exact count."""
        with derived.connection(self._db, "using a derived index") as conn:
            row = conn.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)",
                               (self.table,)).fetchone()
        if row is not None and row[0] is not None and float(row[0]) >= 0:
            return float(row[0])
        return float(len(self))

    def _where(self, labs: list[int] | None) -> tuple[sql.Composable, tuple[Any, ...]]:
        if labs is None:
            return sql.SQL(""), ()
        return sql.SQL("WHERE label = ANY(%s::bigint[])"), (labs,)

    def _count(self, labs: list[int] | None) -> int:
        where, params = self._where(labs)
        with derived.connection(self._db, "using a derived index") as conn:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} {}").format(self._t, where),
                               params).fetchone()
        return int(row[0]) if row else 0

    def _exact(self, vec: Vectors, k: int, labs: list[int] | None) -> Hits:
        """Every (allowed) row scored: the ORDER BY is not the index's operator expression,
        so PostgreSQL scans and sorts instead of walking the graph."""
        where, params = self._where(labs)
        query = sql.SQL("SELECT label, -(embedding <#> {q}) AS score FROM {t} {where} "
                        "ORDER BY score DESC, label LIMIT %s").format(
                            q=self._q, t=self._t, where=where)

        def read(conn: Any) -> list[Any]:
            register(conn)
            rows: list[Any] = conn.execute(query, (vec, *params, k)).fetchall()
            return rows

        return [(int(label), float(score)) for label, score in
                derived.run(self._db, read, "searching vectors")]

    def _ann(self, vec: Vectors, k: int, labs: list[int] | None) -> Hits:
        where, params = self._where(labs)
        query = sql.SQL("SELECT label, embedding <#> {q} AS distance FROM {t} {where} "
                        "ORDER BY embedding <#> {q} LIMIT %s").format(
                            q=self._q, t=self._t, where=where)
        ef = str(min(_MAX_EF, max(self.ef_search, k)))

        def read(conn: Any) -> list[Any]:
            register(conn)
            conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (ef,))
            if self.always_graph:
                conn.execute("SELECT set_config('enable_seqscan', 'off', true), "
                             "set_config('enable_bitmapscan', 'off', true)")
            if labs is not None:
                # Keep walking the graph until k allowed rows are found (pgvector >= 0.8);
                # relaxed order is re-sorted below.
                conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),"
                             " set_config('hnsw.max_scan_tuples', %s, true)",
                             (str(self.max_scan_tuples),))
            rows: list[Any] = conn.execute(query, (vec, *params, vec, k)).fetchall()
            return rows

        hits = [(int(label), -float(d)) for label, d in
                derived.run(self._db, read, "searching vectors")]
        hits.sort(key=lambda h: (-h[1], h[0]))
        return hits

    def save(self, generation: int) -> None:
        """Record the generation, and refresh the planner's statistics (a bounded sample)."""
        def stamp(conn: Any) -> None:
            conn.execute(sql.SQL("ANALYZE {}").format(self._t))
            derived.write_generation(conn, self._collection, KIND, generation)

        derived.run(self._db, stamp, "saving a vector index")

    def stamp(self, generation: int) -> None:
        """Record the generation only: what a shared index does after each batch (the
        statistics are refreshed by ``save`` after a bulk load, and by autovacuum)."""
        derived.run(self._db, lambda conn: derived.write_generation(
            conn, self._collection, KIND, generation), "stamping a vector index")

    def clear(self) -> None:
        """Empty the table and forget the generation, in one transaction."""
        def wipe(conn: Any) -> None:
            conn.execute(sql.SQL("TRUNCATE {}").format(self._t))
            derived.forget_generation(conn, self._collection, KIND)

        derived.run(self._db, wipe, "clearing a vector index")

    @property
    def deleted(self) -> int:
        """PostgreSQL keeps no tombstones a caller could count: VACUUM reclaims dead rows."""
        return 0

    def disk_bytes(self) -> int:
        return derived.relation_bytes(self._db, [self.table])

    def compact(self) -> None:
        """VACUUM (ANALYZE): reclaims dead rows and their graph entries; results unchanged.
        It cannot run inside a transaction, and may outlast the statement timeout."""
        with derived.connection(self._db, "using a derived index") as conn:
            conn.execute("SET statement_timeout = 0")
            try:
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(self._t))
            finally:
                conn.execute("RESET statement_timeout")

"""``KeywordIndex`` as BM25 computed in PostgreSQL, with the embedded backend's analyzer.

Terms come from ``core.analysis.Analyzer`` in Python, so both backends index and query the
same terms. Per collection: a postings table (term, label, tf), a lengths table (label,
number of terms) and a one-row stats table (documents, total terms), which writers keep
current so a query never counts the collection. One SQL query scores: FTS5's BM25 (k1=1.2,
b=0.75, avgdl = total / documents) with FTS5's idf, ln((N - n + 0.5) / (n + 0.5)) floored at
1e-6 for terms in half the documents or more, summed over the query's distinct terms; the
score is the positive sum (higher is better), as the FTS5 backend returns it.

The title is a field of its own: a posting keeps the term's frequency in the whole chunk
(``tf``: title and text, as one text) and in its title (``ttf``). A search with a
``title_weight`` w scores with tf + (w - 1) x ttf in place of tf, the title's frequency
multiplied by w before saturation, lengths unweighted: BM25F as FTS5's ``bm25()`` column
weights compute it, so both backends agree. Without a weight (or 1) the query is the
unweighted one, unchanged. Tables made before ``ttf`` existed are dropped when opened, with
their generation, so the engine rebuilds them from the store.

Writes of one collection are serialized by a transaction-level advisory lock (they adjust
the stats row and replace postings). They are durable when they return, but ``generation``
stays the one the last ``save`` recorded, as for the vector index."""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from psycopg import sql

from semsearch.adapters.postgres import derived
from semsearch.adapters.postgres.db import Database
from semsearch.core.analysis import Analyzer
from semsearch.errors import InputError
from semsearch.ports import KeywordItem

log = logging.getLogger(__name__)
KIND = "keyword"
K1 = 1.2
B = 0.75
IDF_FLOOR = 1e-6
_MAX_TERM = 256  # characters; up to 4 bytes each, well under the B-tree limit


def term_key(term: str) -> str:
    """The term as stored: a B-tree entry holds at most ~2.7 kB, and a "word" of a document
    may be longer (a base64 blob, a long token run). Long terms are kept as a prefix plus
    their hash, the same for indexing and querying; '#' is never part of an analyzed term."""
    if len(term) <= _MAX_TERM:
        return term
    return f"{term[:64]}#{hashlib.sha256(term.encode()).hexdigest()}"


def _float(x: float) -> sql.Composable:
    """A double precision literal (a bare 0.75 would be numeric, and slow)."""
    return sql.SQL("{}::float8").format(sql.Literal(repr(float(x))))


def keyword_tables(collection: str) -> list[str]:
    return [derived.table_name(p, collection) for p in ("kwp", "kwl", "kws")]


class PgKeywordIndex:
    def __init__(self, db: Database, collection: str, analyzer: Analyzer | None = None) -> None:
        self._db = db
        self._collection = collection
        self._analyzer = analyzer or Analyzer()
        self.tables = keyword_tables(collection)
        postings, lengths, stats = (derived.ident(t) for t in self.tables)
        self._postings, self._lengths, self._stats = postings, lengths, stats
        derived.run(self._db, self._setup, "creating a keyword index")
        self._search_sql = self._scoring_sql(filtered=False)
        self._filtered_sql = self._scoring_sql(filtered=True)
        self._weighted_sql = self._scoring_sql(filtered=False, weighted=True)
        self._weighted_filtered_sql = self._scoring_sql(filtered=True, weighted=True)

    def _setup(self, conn: Any) -> None:
        derived.ddl_lock(conn)
        derived.ensure_state_table(conn)
        postings_name = self.tables[0]
        if derived.table_exists_in(conn, postings_name) and not conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = %s AND column_name = 'ttf'",
                (postings_name,)).fetchone():
            log.info("the keyword index of %r predates the title field; rebuilding it",
                     self._collection)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}, {}, {}").format(
                self._postings, self._lengths, self._stats))
            derived.forget_generation(conn, self._collection, KIND)
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (term TEXT NOT NULL, "
                             "label BIGINT NOT NULL, tf INT NOT NULL, ttf INT NOT NULL, "
                             "PRIMARY KEY (term, label) INCLUDE (tf, ttf))").format(
                                 self._postings))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (label)").format(
            derived.ident(f"{postings_name}_label"), self._postings))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (label BIGINT PRIMARY KEY, "
                             "len INT NOT NULL)").format(self._lengths))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (one BOOLEAN PRIMARY KEY "
                             "DEFAULT TRUE CHECK (one), docs BIGINT NOT NULL, "
                             "total BIGINT NOT NULL)").format(self._stats))
        conn.execute(sql.SQL("INSERT INTO {} (docs, total) VALUES (0, 0) "
                             "ON CONFLICT DO NOTHING").format(self._stats))

    def _scoring_sql(self, *, filtered: bool, weighted: bool = False) -> sql.Composed:
        """Parameters: terms (text[]), [title weight - 1 (float8)], [allowed (bigint[])], k.
        Unweighted, the frequency is ``tf``; weighted, tf + (w - 1) x ttf."""
        label_filter = sql.SQL("AND p.label = ANY(%s::bigint[])" if filtered else "")
        tf = sql.SQL("(p.tf + x.extra * p.ttf)" if weighted else "p.tf")
        extra = sql.SQL("CROSS JOIN (SELECT %s::float8 AS extra) x" if weighted else "")
        # Shaped so that any plan is a good one, statistics or not: document frequencies
        # and postings are read per query term through the (term, label) primary key. The
        # terms are summed in one order, so a score never changes in its last bit with the
        # plan (after a VACUUM, say).
        return sql.SQL("""
            WITH q AS MATERIALIZED (
                     SELECT t.term, (SELECT count(*) FROM {postings} c
                                     WHERE c.term = t.term)::float8 AS df
                     FROM (SELECT DISTINCT unnest(%s::text[]) AS term) t),
                 w AS MATERIALIZED (
                     SELECT q.term, ln(((SELECT docs FROM {stats})::float8 - q.df + 0.5)
                                       / (q.df + 0.5)) AS idf
                     FROM q WHERE q.df > 0)
            SELECT p.label,
                   sum(CASE WHEN w.idf > 0 THEN w.idf ELSE {floor} END
                       * {tf} * {k1p1}
                       / ({tf} + {k1} * (1 - {b} + {b} * l.len / (
                           SELECT total::float8 / greatest(docs, 1) FROM {stats})))
                       ORDER BY w.term) AS score
            FROM w {extra} CROSS JOIN LATERAL (SELECT label, tf, ttf FROM {postings}
                                               WHERE term = w.term) p
                 JOIN {lengths} l ON l.label = p.label
            WHERE TRUE {label_filter}
            GROUP BY p.label
            ORDER BY score DESC, p.label
            LIMIT %s""").format(
            stats=self._stats, postings=self._postings, lengths=self._lengths,
            floor=_float(IDF_FLOOR), k1=_float(K1), k1p1=_float(K1 + 1), b=_float(B),
            label_filter=label_filter, tf=tf, extra=extra)

    @property
    def generation(self) -> int:
        return derived.read_generation(self._db, self._collection, KIND)

    def __len__(self) -> int:
        with derived.connection(self._db, "using a derived index") as conn:
            row = conn.execute(sql.SQL("SELECT docs FROM {}").format(self._stats)).fetchone()
        return int(row[0]) if row else 0

    def _lock(self, conn: Any) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"semsearch-keyword:{self._collection}",))

    def _drop(self, conn: Any, labels: list[int]) -> None:
        """Delete these documents and take their lengths off the stats row."""
        row = conn.execute(sql.SQL(
            "WITH gone AS (DELETE FROM {} WHERE label = ANY(%s::bigint[]) RETURNING len) "
            "SELECT count(*), coalesce(sum(len), 0) FROM gone").format(self._lengths),
            (labels,)).fetchone()
        if row and int(row[0]):
            conn.execute(sql.SQL("DELETE FROM {} WHERE label = ANY(%s::bigint[])").format(
                self._postings), (labels,))
            conn.execute(sql.SQL("UPDATE {} SET docs = docs - %s, total = total - %s").format(
                self._stats), (int(row[0]), int(row[1])))

    def add(self, items: Sequence[KeywordItem]) -> None:
        """Index (label, text[, title]) under their labels, replacing any existing entry
        (last one wins)."""
        latest = {int(item[0]): item for item in items}
        if not latest:
            return
        terms = self._analyzer.terms
        titles = {label: Counter(term_key(t) for t in terms(item[2] if len(item) > 2 else ""))
                  for label, item in latest.items()}
        docs = {label: [term_key(t) for t in terms(item[1])] + list(titles[label].elements())
                for label, item in latest.items()}
        labels = list(docs)
        total = sum(len(t) for t in docs.values())

        def write(conn: Any) -> None:
            self._lock(conn)
            self._drop(conn, labels)
            cur = conn.cursor()
            with cur.copy(sql.SQL("COPY {} (label, len) FROM STDIN").format(
                    self._lengths)) as copy:
                for label, terms in docs.items():
                    copy.write_row((label, len(terms)))
            with cur.copy(sql.SQL("COPY {} (term, label, tf, ttf) FROM STDIN").format(
                    self._postings)) as copy:
                for label, found in docs.items():
                    in_title = titles[label]
                    for term, tf in Counter(found).items():
                        copy.write_row((term, label, tf, in_title.get(term, 0)))
            conn.execute(sql.SQL("UPDATE {} SET docs = docs + %s, total = total + %s").format(
                self._stats), (len(docs), total))

        derived.run(self._db, write, "adding to the keyword index")

    def remove(self, labels: Iterable[int]) -> None:
        labs = [int(x) for x in labels]
        if not labs:
            return

        def write(conn: Any) -> None:
            self._lock(conn)
            self._drop(conn, labs)

        derived.run(self._db, write, "removing from the keyword index")

    def clear(self) -> None:
        """Empty the index and forget the generation, in one transaction."""
        def wipe(conn: Any) -> None:
            self._lock(conn)
            conn.execute(sql.SQL("TRUNCATE {}, {}").format(self._postings, self._lengths))
            conn.execute(sql.SQL("UPDATE {} SET docs = 0, total = 0").format(self._stats))
            derived.forget_generation(conn, self._collection, KIND)

        derived.run(self._db, wipe, "clearing the keyword index")

    def stamp(self, generation: int) -> None:
        """Record the generation only: what a shared index does after each batch."""
        derived.run(self._db, lambda conn: derived.write_generation(
            conn, self._collection, KIND, generation), "stamping the keyword index")

    def save(self, generation: int) -> None:
        """Record the generation, then VACUUM (ANALYZE) what the run wrote, as autovacuum
        would some time later: fresh planner statistics, and a visibility map that lets a
        query read postings from the (term, label, tf) index alone."""
        derived.run(self._db, lambda conn: derived.write_generation(
            conn, self._collection, KIND, generation), "saving the keyword index")
        try:
            self._vacuum()
        except Exception as exc:  # only a speed-up: the save itself is done
            log.warning("VACUUM of the keyword index of %r failed: %s", self._collection, exc)

    def search(self, query: str, k: int, allowed: set[int] | None = None,
               title_weight: float | None = None) -> list[tuple[int, float]]:
        terms = list(dict.fromkeys(term_key(t) for t in self._analyzer.terms(query)))
        if not terms or k <= 0 or (allowed is not None and not allowed):
            return []
        weight: tuple[Any, ...] = ()
        if title_weight is not None and title_weight != 1.0:
            w = float(title_weight)
            if not math.isfinite(w) or w <= 0:
                raise InputError(f"title_weight must be a finite number above 0, "
                                 f"got {title_weight!r}")
            weight = (w - 1.0,)
        params: tuple[Any, ...]
        if allowed is None:
            stmt = self._weighted_sql if weight else self._search_sql
            params = (terms, *weight, k)
        else:
            stmt = self._weighted_filtered_sql if weight else self._filtered_sql
            params = (terms, *weight, [int(x) for x in allowed], k)
        with derived.connection(self._db, "using a derived index") as conn:
            rows = conn.execute(stmt, params).fetchall()
        return [(int(label), float(score)) for label, score in rows]

    def disk_bytes(self) -> int:
        return derived.relation_bytes(self._db, self.tables)

    def compact(self) -> None:
        """VACUUM (ANALYZE) the tables: dead postings go, results stay the same."""
        self._vacuum()

    def _vacuum(self) -> None:
        with derived.connection(self._db, "using a derived index") as conn:
            conn.execute("SET statement_timeout = 0")
            try:
                for table in (self._postings, self._lengths, self._stats):
                    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))
            finally:
                conn.execute("RESET statement_timeout")

    def close(self) -> None:
        """Nothing to close: the connection pool belongs to whoever opened the database."""

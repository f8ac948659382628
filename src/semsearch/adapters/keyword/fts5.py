"""``KeywordIndex`` over SQLite FTS5 in its own database file.

Texts go through ``core.analysis.Analyzer`` (stemmed, stop words removed) and the resulting
terms, space-joined, are indexed with ``unicode61``; ``rowid`` is the chunk label. Queries are
an OR of the quoted, de-duplicated query terms, ranked by FTS5's ``bm25()`` (k1=1.2, b=0.75);
the returned score is ``-bm25()`` so that higher is better.

Writes (``add``/``remove``/``clear``) run inside one open transaction that ``save(generation)``
commits together with the generation; closing without ``save`` discards them, so the file
always holds a state matching its recorded generation."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from semsearch.core.analysis import Analyzer
from semsearch.errors import BackendError

# Allowed-label sets up to this size are bound as SQL parameters (under SQLite's historical
# 999-variable limit); larger ones travel as one JSON array through json_each().
_INLINE_ALLOWED = 900


def match_expression(terms: Iterable[str]) -> str:
    """OR of quoted terms, duplicates dropped; "" when there are none. Quoting makes every
    FTS5 operator (AND, NEAR, *, -, ^, :, parentheses) a literal."""
    unique = dict.fromkeys(t for t in terms if t)
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in unique)


class Fts5KeywordIndex:
    def __init__(self, path: Path, analyzer: Analyzer | None = None, *,
                 detail: str = "full") -> None:
        if detail not in ("full", "column", "none"):
            raise ValueError(f"invalid FTS5 detail option: {detail!r}")
        self._analyzer = analyzer or Analyzer()
        self._lock = threading.RLock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA temp_store=MEMORY")
            self._db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS terms USING fts5("
                             f"body, tokenize='unicode61', detail={detail})")
            self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
        except sqlite3.Error as e:
            raise BackendError(f"cannot open keyword index {path}: {e}") from e

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """Atomic step inside the pending transaction (opened on first write)."""
        with self._lock:
            try:
                if not self._db.in_transaction:
                    self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("SAVEPOINT step")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK TO step")
                    raise
                finally:
                    self._db.execute("RELEASE step")
            except sqlite3.Error as e:
                raise BackendError(f"keyword index write failed: {e}") from e

    @property
    def generation(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return -1 if row is None else int(row[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM terms").fetchone()[0])

    def add(self, items: Sequence[tuple[int, str]]) -> None:
        """Index texts under their labels, replacing any existing entry (last one wins)."""
        latest = {int(label): text for label, text in items}
        rows = [(label, " ".join(self._analyzer.terms(text))) for label, text in latest.items()]
        with self._write() as db:
            db.executemany("DELETE FROM terms WHERE rowid = ?", [(r[0],) for r in rows])
            db.executemany("INSERT INTO terms (rowid, body) VALUES (?, ?)", rows)

    def remove(self, labels: Iterable[int]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM terms WHERE rowid = ?", [(int(x),) for x in labels])

    def clear(self) -> None:
        """Empty the index (and forget the generation) until the next ``save``."""
        with self._write() as db:
            db.execute("DELETE FROM terms")
            db.execute("DELETE FROM meta WHERE key = 'generation'")

    def save(self, generation: int) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generation', ?)",
                       (int(generation),))
        with self._lock:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise BackendError(f"keyword index commit failed: {e}") from e

    def search(self, query: str, k: int,
               allowed: set[int] | None = None) -> list[tuple[int, float]]:
        expr = match_expression(self._analyzer.terms(query))
        if not expr or k <= 0 or (allowed is not None and not allowed):
            return []
        sql = "SELECT rowid, bm25(terms) AS s FROM terms WHERE terms MATCH ?"
        params: list[object] = [expr]
        # "+rowid" keeps the filter away from FTS5's xBestIndex: pushed down, FTS5 re-runs the
        # whole query once per allowed rowid (~100x slower); here SQLite scans the matches and
        # probes an ephemeral index of the allowed labels before bm25() and LIMIT apply.
        if allowed is not None and len(allowed) <= _INLINE_ALLOWED:
            sql += f" AND +rowid IN ({','.join('?' * len(allowed))})"
            params += [int(x) for x in allowed]
        elif allowed is not None:
            sql += " AND +rowid IN (SELECT value FROM json_each(?))"
            params.append(json.dumps([int(x) for x in allowed]))
        with self._lock:
            try:
                sql += " ORDER BY s, rowid LIMIT ?"
                rows = self._db.execute(sql, (*params, k)).fetchall()
            except sqlite3.Error as e:
                raise BackendError(f"keyword search failed: {e}") from e
        return [(int(label), -float(score)) for label, score in rows]

    def disk_bytes(self) -> int:
        with self._lock:
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        return page * pages

    def compact(self) -> None:
        """Merge FTS5 segments (dropping deleted entries) and return free pages to the OS.
        Only between saves: pending writes are committed by ``save`` first."""
        with self._lock:
            if self._db.in_transaction:
                raise BackendError("keyword index has unsaved writes; save before compacting")
            try:
                self._db.execute("INSERT INTO terms(terms) VALUES ('optimize')")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as e:
                raise BackendError(f"keyword index compaction failed: {e}") from e

    def close(self) -> None:
        """Close the file; writes not yet ``save``d are rolled back."""
        with self._lock:
            self._db.close()

"""``KeywordIndex`` over SQLite FTS5 in its own database file.

Texts go through ``core.analysis.Analyzer`` (stemmed, stop words removed) and the resulting
terms, space-joined, are indexed with ``unicode61``; ``rowid`` is the chunk label. Queries are
an OR of the quoted, de-duplicated query terms, ranked by FTS5's ``bm25()`` (k1=1.2, b=0.75);
the returned score is ``-bm25()`` so that higher is better.

The text and the title are two columns (``body``, ``title``). ``bm25()``'s column weights
multiply each column's term frequency before saturation, while the document length and the
average length stay unweighted: with weight 1 (the default) the score is bit for bit the
one of a single column holding title and text, as before; ``title_weight`` > 1 lifts title
matches. Weights need per-column frequencies: with ``detail=none`` they have no effect.
A file written before the title had its own column (one ``body`` column) is emptied and
its generation forgotten when opened writable, so the engine rebuilds it from the store;
opened read-only (a full disk) it reports generation -1 and answers from the old column
until then.

Searches are answered from an in-memory copy of the postings (``postings``) when it is
current and the collection is small enough (``MEMORY_MAX_ROWS``): the same hits and scores as
``bm25()``, bit for bit, 20-30x faster than FTS5 on SciFact claims. The file stays the
durable index and the answer whenever the copy is missing or stale: after any write it is
rebuilt from the rows, on a worker thread by default, while FTS5 answers.

Writes (``add``/``remove``/``clear``) run inside one open transaction that ``save(generation)``
commits together with the generation; closing without ``save`` discards them, so the file
always holds a state matching its recorded generation.

On a full disk the file opens read-only (``adapters.storage``) and searches work. Writes then
go to an in-memory copy of the file, so a rebuild (a store written by a run whose index save
failed) still serves searches; ``save`` commits them in memory and copies the whole index back
into the file once there is room, raising ``StorageFullError`` (naming the file) until then.
``generation`` is always the one the file holds. If SQLite itself rolls the pending
transaction of the file back (it does on SQLITE_FULL), the unsaved writes are gone: the index
then reports generation -1 and refuses further writes until ``clear`` or a reopen, so it is
rebuilt from the store instead of saving a state that lacks them under a newer
generation."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from semsearch.adapters.keyword.postings import Cancelled, Postings, Unicode61
from semsearch.adapters.storage import open_sqlite, write_error
from semsearch.core.analysis import Analyzer
from semsearch.errors import BackendError, InputError, StorageFullError
from semsearch.ports import KeywordItem

# Allowed-label sets up to this size are bound as SQL parameters (under SQLite's historical
# 999-variable limit); larger ones travel as one JSON array through json_each().
_INLINE_ALLOWED = 900
_WHAT = "the keyword index"
# Collections up to this many chunks are also searched from postings kept in memory
# (``postings``: ~20 bytes a posting, ~2 MB per 1,000 SciFact-sized chunks); larger ones
# only through FTS5.
MEMORY_MAX_ROWS = 100_000
_BUILD_BATCH = 2000  # rows read per lock hold while building the postings

log = logging.getLogger(__name__)


def _has_title_column(db: sqlite3.Connection) -> bool:
    return any(row[1] == "title" for row in db.execute("PRAGMA table_info(terms)"))


def title_of(item: KeywordItem) -> str:
    """The title of a (label, text[, title]) item ("" when it has none)."""
    return item[2] if len(item) > 2 else ""


def _weight(value: float) -> float:
    """A column weight bm25() can take: finite and above 0 (callers validate; this keeps a
    bad value from reaching SQL as NaN)."""
    w = float(value)
    if not math.isfinite(w) or w <= 0:
        raise InputError(f"title_weight must be a finite number above 0, got {value!r}")
    return w


def match_expression(terms: Iterable[str]) -> str:
    """OR of quoted terms, duplicates dropped; "" when there are none. Quoting makes every
    FTS5 operator (AND, NEAR, *, -, ^, :, parentheses) a literal."""
    unique = dict.fromkeys(t for t in terms if t)
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in unique)


class Fts5KeywordIndex:
    """``memory`` says how searches use the in-memory postings (``postings``): "background"
    (the default) builds them on a worker thread after the first search that finds them
    missing or stale, FTS5 answering meanwhile; "sync" builds them inside that search;
    "off" never. They are rebuilt after any write, by this index (its pending transaction
    included) or by another connection to the file (``PRAGMA data_version``)."""

    def __init__(self, path: Path, analyzer: Analyzer | None = None, *,
                 detail: str = "full", memory: str = "background",
                 memory_max_rows: int = MEMORY_MAX_ROWS) -> None:
        if detail not in ("full", "column", "none"):
            raise ValueError(f"invalid FTS5 detail option: {detail!r}")
        if memory not in ("background", "sync", "off"):
            raise ValueError(f"invalid memory option: {memory!r}")
        self._memory = memory if detail == "full" else "off"  # weights need columns
        self._memory_max_rows = memory_max_rows
        self._changes = 0  # bumped by every write: postings built before it are stale
        self._postings: tuple[int, int, Postings] | None = None  # (changes, data_version, p)
        self._builder: threading.Thread | None = None
        self._closed = False
        self._tokenizer = Unicode61()
        self._too_big: tuple[int, int] | None = None
        self._analyzer = analyzer or Analyzer()
        self._lock = threading.RLock()
        self._path = Path(path)
        self._detail = detail
        self._lost: str | None = None  # why SQLite rolled back unsaved writes, if it did
        self._db, self._read_only = self._open()
        self._in_memory = False
        self._file_generation = -1  # what the file holds, while the index lives in memory

    def _open(self) -> tuple[sqlite3.Connection, StorageFullError | None]:
        def setup(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA temp_store=MEMORY")
            self._create(db)

        db, read_only = open_sqlite(self._path, _WHAT, setup)
        if read_only is not None:
            db.execute("PRAGMA temp_store=MEMORY")
        self._titled = _has_title_column(db)
        return db, read_only

    def _create(self, db: sqlite3.Connection) -> None:
        """The tables, in the two-column layout; a one-column file (written before titles
        had a field) is dropped and its generation forgotten: derived data, rebuilt from
        the store by whoever opens it."""
        if not _has_title_column(db) and db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'terms'").fetchone():
            log.info("%s %s predates the title field; it will be rebuilt", _WHAT, self._path)
            db.execute("DROP TABLE terms")
            db.execute("DELETE FROM meta WHERE key = 'generation'")
        db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS terms USING fts5("
                   f"body, title, tokenize='unicode61', detail={self._detail})")
        db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")

    def _writable(self, *, memory: bool = True) -> None:
        """Reopen read-write if the file was opened read-only (full disk). If it still cannot
        be written, carry on in memory (``memory``) or raise. Only between transactions."""
        if self._read_only is None or self._in_memory:
            return
        db, read_only = self._open()
        self._db.close()
        self._db, self._read_only = db, read_only
        if read_only is None:
            return
        if not memory:
            raise read_only
        mem = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        self._db.backup(mem)
        self._file_generation = self._stored_generation() if self._titled else -1
        self._db.close()
        if not self._titled:  # the copy gets the new layout: it is rebuilt from the store
            self._create(mem)
            self._titled = True
        self._db, self._in_memory = mem, True
        log.info("%s; changes to it are kept in memory until then", read_only)

    def _persist(self) -> None:
        """Copy the in-memory index into the file, in one transaction, and go back to it."""
        db, read_only = self._open()
        if read_only is not None:
            db.close()
            self._read_only = read_only
            raise read_only
        try:
            self._db.backup(db)
        except sqlite3.Error as e:
            db.close()
            raise write_error(_WHAT, self._path, e) from e
        self._db.close()
        self._db, self._read_only, self._in_memory = db, None, False

    @contextmanager
    def _write(self, *, after_loss: bool = False) -> Iterator[sqlite3.Connection]:
        """Atomic step inside the pending transaction (opened on first write)."""
        with self._lock, self._changing():
            if self._lost is not None and not after_loss:
                raise BackendError(f"{_WHAT} {self._path} lost its unsaved writes "
                                   f"({self._lost}); reopen it to rebuild from the store")
            pending = self._db.in_transaction
            try:
                if not pending:
                    self._writable()
                    self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("SAVEPOINT step")
            except sqlite3.Error as e:
                raise self._failed(e, pending) from e
            try:
                yield self._db
            except BaseException as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK TO step")
                        self._db.execute("RELEASE step")
                if isinstance(exc, sqlite3.Error):
                    raise self._failed(exc, pending) from exc
                raise
            try:
                self._db.execute("RELEASE step")
            except sqlite3.Error as e:
                raise self._failed(e, pending) from e

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Marks the in-memory postings stale before and after a change, whatever becomes
        of it (a rolled-back step, a transaction SQLite threw away, a swapped connection)."""
        self._changes += 1
        self._postings = None
        try:
            yield
        finally:
            self._changes += 1
            self._postings = None

    def _failed(self, exc: sqlite3.Error, pending: bool) -> BackendError:
        """The error to raise for a failed write. If SQLite threw away the whole transaction
        with it (it does on a full disk) and it held earlier unsaved writes, they are lost."""
        if pending and not self._db.in_transaction:
            self._lost = str(exc)
        return write_error(_WHAT, self._path, exc)

    @property
    def generation(self) -> int:
        with self._lock:
            if self._lost is not None or not self._titled:
                return -1
            return self._file_generation if self._in_memory else self._stored_generation()

    def _stored_generation(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return -1 if row is None else int(row[0])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM terms").fetchone()[0])

    def add(self, items: Sequence[KeywordItem]) -> None:
        """Index (label, text[, title]) under their labels, replacing any existing entry
        (last one wins)."""
        latest = {int(item[0]): item for item in items}
        terms = self._analyzer.terms
        rows = [(label, " ".join(terms(item[1])), " ".join(terms(title_of(item))))
                for label, item in latest.items()]
        with self._write() as db:
            db.executemany("DELETE FROM terms WHERE rowid = ?", [(r[0],) for r in rows])
            db.executemany("INSERT INTO terms (rowid, body, title) VALUES (?, ?, ?)", rows)

    def remove(self, labels: Iterable[int]) -> None:
        with self._write() as db:
            db.executemany("DELETE FROM terms WHERE rowid = ?", [(int(x),) for x in labels])

    def clear(self) -> None:
        """Empty the index (and forget the generation) until the next ``save``. Allowed
        after lost writes: what follows a clear does not depend on them."""
        with self._write(after_loss=True) as db:
            db.execute("DELETE FROM terms")
            db.execute("DELETE FROM meta WHERE key = 'generation'")
            self._lost = None

    def stamp(self, generation: int) -> None:
        """This index persists only whole: stamping is saving."""
        self.save(generation)

    def save(self, generation: int) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('generation', ?)",
                       (int(generation),))
        with self._lock, self._changing():  # a failed COMMIT may roll the writes back
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                raise self._failed(e, pending=True) from e
            if self._in_memory:
                self._persist()

    def search(self, query: str, k: int, allowed: set[int] | None = None,
               title_weight: float | None = None) -> list[tuple[int, float]]:
        terms = list(dict.fromkeys(t for t in self._analyzer.terms(query) if t))
        if not terms or k <= 0 or (allowed is not None and not allowed):
            return []
        weight = None
        if title_weight is not None and title_weight != 1.0 and self._titled:
            weight = _weight(title_weight)
        postings = self._current_postings()
        if postings is not None:
            tokens = self._tokenizer.tokens(terms)
            if all(len(tokens[t]) == 1 for t in terms):  # else FTS5 reads it as a phrase
                return postings.search([tokens[t][0] for t in terms], k, allowed, weight)
        return self._fts5_search(terms, k, allowed, weight)

    def _fts5_search(self, terms: list[str], k: int, allowed: set[int] | None,
                     weight: float | None) -> list[tuple[int, float]]:
        params: list[object] = []
        rank = "bm25(terms)"
        if weight is not None:
            rank = "bm25(terms, 1.0, ?)"
            params.append(weight)
        sql = f"SELECT rowid, {rank} AS s FROM terms WHERE terms MATCH ?"
        params.append(match_expression(terms))
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

    # -- in-memory postings ----------------------------------------------------------------

    def _state(self) -> tuple[int, int]:
        """What postings must have been built from to be current: this index's change
        count and the file's data version (moved by commits of other connections)."""
        return self._changes, int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _current_postings(self) -> Postings | None:
        """The postings if they are current; else None, after starting a build."""
        if self._memory == "off":
            return None
        with self._lock:
            if self._closed or self._lost is not None or not self._titled:
                return None
            try:
                state = self._state()
            except sqlite3.Error:
                return None
            if self._postings is not None and self._postings[:2] == state:
                return self._postings[2]
            self._postings = None
            if self._too_big == state:
                return None
            if self._memory == "sync":
                return self._build_postings()
            if self._builder is None:
                self._builder = threading.Thread(target=self._build_in_background,
                                                 name="keyword-postings", daemon=True)
                self._builder.start()
        return None

    def _build_in_background(self) -> None:
        try:
            self._build_postings()
        except Exception:  # the searches carry on with FTS5
            log.warning("building the in-memory keyword postings of %s failed", self._path,
                        exc_info=True)
        finally:
            with self._lock:
                self._builder = None

    def _build_postings(self) -> Postings | None:
        """Read every row, a batch per lock hold, and install the postings built from them
        unless the index changed (or closed) meanwhile."""
        with self._lock:
            if self._closed:
                return None
            start = self._state()
            if int(self._db.execute("SELECT count(*) FROM terms").fetchone()[0]) \
                    > self._memory_max_rows:
                self._too_big = start
                return None

        def check() -> None:
            if self._closed or self._changes != start[0]:
                raise Cancelled

        rows: list[tuple[int, str, str]] = []
        last = None
        try:
            while True:
                with self._lock:
                    if self._closed or self._state() != start:
                        raise Cancelled
                    batch = self._db.execute(
                        "SELECT rowid, body, title FROM terms WHERE rowid > ? ORDER BY rowid "
                        "LIMIT ?", (-(2**63) if last is None else last, _BUILD_BATCH)).fetchall()
                if not batch:
                    break
                rows += batch
                last = batch[-1][0]
            postings = Postings.build(rows, self._tokenizer, check)
        except (Cancelled, sqlite3.Error):
            return None
        with self._lock:
            if self._closed or self._state() != start:
                return None
            self._postings = (*start, postings)
        log.debug("%s: %d rows in memory (%.1f MB)", self._path, postings.rows,
                  postings.nbytes / 1e6)
        return postings

    def disk_bytes(self) -> int:
        with self._lock:
            page = int(self._db.execute("PRAGMA page_size").fetchone()[0])
            pages = int(self._db.execute("PRAGMA page_count").fetchone()[0])
        return page * pages

    def compact(self) -> None:
        """Merge FTS5 segments (dropping deleted entries) and return free pages to the OS.
        Only between saves: pending writes are committed by ``save`` first."""
        with self._lock:
            if self._db.in_transaction or self._in_memory:
                raise BackendError("keyword index has unsaved writes; save before compacting")
            with self._changing():
                self._compact()

    def _compact(self) -> None:
        self._writable(memory=False)
        try:
            self._db.execute("INSERT INTO terms(terms) VALUES ('optimize')")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("VACUUM")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as e:
            raise write_error(_WHAT, self._path, e, "compact") from e

    def close(self) -> None:
        """Close the file; writes not yet ``save``d are rolled back."""
        with self._lock:
            self._closed = True
            self._postings = None
            builder = self._builder
            self._db.close()
        if builder is not None:
            builder.join()
        self._tokenizer.close()

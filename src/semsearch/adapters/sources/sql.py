"""A table or query in any SQLAlchemy database (PostgreSQL, MySQL/MariaDB, SQLite) as a sync
source.

Rows are read in pages ordered by ``(updated_at, id)`` with keyset pagination, so a page
boundary never skips or repeats a row even when many rows share a timestamp. Resuming starts
``lookback_seconds`` before the watermark: a row committed late with an older timestamp (a
long transaction that stamped ``now()`` at its start) is still read, and rows re-read that
way are cheap because unchanged content is skipped by hash. Each page is its own short
query; a lost or refused connection is retried, then reported with how far the run got. Any
other database error (a division by zero in one row, an unknown column) is reported at once
with the database's own message: retrying cannot change its outcome.

Selected columns are labelled with synthetic names (``id``, ``text0``, ``meta1``, ...), never
with the source's own: those may hold quotes, backticks, ``%`` or colons, or be longer than
the database allows an alias to be, and a label the database truncated or rewrote would no
longer be found in the result."""

from __future__ import annotations

import datetime as dt
import decimal
import importlib.util
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from semsearch.core.sources import SourceSpec, mask_password
from semsearch.core.types import Document
from semsearch.errors import InputError, SourceError
from semsearch.ports import SourceRow

log = logging.getLogger(__name__)
T = TypeVar("T")

_TRUE = {"1", "t", "true", "y", "yes", "on"}


class _Unreachable(Exception):
    """``engine.connect()`` itself failed: the database is down, restarting or refusing
    connections. Kept apart from errors of a statement, which are never retried."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``mysql://`` name drivers (psycopg2, mysqlclient) that need a C
    build; use the ones semsearch installs when those are absent."""
    scheme, sep, rest = url.partition("://")
    if scheme == "postgresql" and importlib.util.find_spec("psycopg2") is None:
        return f"postgresql+psycopg{sep}{rest}"
    if scheme in ("mysql", "mariadb") and importlib.util.find_spec("MySQLdb") is None:
        return f"{scheme}+pymysql{sep}{rest}"
    return url


def encode_value(value: Any) -> Any:
    """Watermark values as JSON that round-trips their type."""
    if isinstance(value, dt.datetime):
        return {"datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    return value


def decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        kind, raw = next(iter(value.items()))
        parsers: dict[str, Callable[[str], Any]] = {
            "datetime": dt.datetime.fromisoformat, "date": dt.date.fromisoformat,
            "decimal": decimal.Decimal, "hex": bytes.fromhex}
        return parsers[kind](raw)
    return value


def step_back(value: Any, seconds: float) -> Any:
    """``value`` moved ``seconds`` earlier, in its own type; strings cannot be, so they stay."""
    if not seconds:
        return value
    if isinstance(value, dt.datetime):
        return value - dt.timedelta(seconds=seconds)
    if isinstance(value, dt.date):
        return value - dt.timedelta(days=max(1, int(-(-seconds // 86400))))
    if isinstance(value, int | float | decimal.Decimal) and not isinstance(value, bool):
        return value - type(value)(seconds) if isinstance(value, decimal.Decimal) \
            else value - seconds
    return value


def _plain(value: Any) -> Any:
    """Metadata as JSON-friendly scalars, so filters can range over prices and dates."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def _truthy(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip().lower() in _TRUE
    return bool(value)


class SqlSource:
    def __init__(self, spec: SourceSpec, max_text_chars: int = 0) -> None:
        self.spec = spec
        self._url = normalize_url(spec.source)
        try:
            self._engine = sa.create_engine(self._url, pool_pre_ping=True)
        except (sa_exc.ArgumentError, sa_exc.NoSuchModuleError) as exc:
            raise InputError(f"cannot use source URL {mask_password(spec.source)!r}: "
                             f"{exc}") from None
        except ModuleNotFoundError as exc:
            raise InputError(f"source URL {mask_password(spec.source)!r} needs the Python "
                             f"package {exc.name!r}; pip install it") from None
        self._max_chars = max_text_chars
        self._secret = self._engine.url.password or ""
        self._connected = False
        self._from: Any = None
        self._cols: dict[str, Any] = {}
        self.rows_read = 0

    @property
    def name(self) -> str:
        what = f"table {self.spec.table}" if self.spec.table else "query"
        return f"{mask_password(self.spec.source)} {what}"

    @property
    def incremental(self) -> bool:
        return bool(self.spec.updated_at)

    # -- shape -------------------------------------------------------------------------
    def _wanted(self) -> dict[str, str]:
        s = self.spec
        want = {"id": s.id, **{f"text{i}": c for i, c in enumerate(s.text)}}
        if s.title:
            want["title"] = s.title
        if s.updated_at:
            want["updated_at"] = s.updated_at
        if s.deleted_flag:
            want["deleted"] = s.deleted_flag
        want.update({f"meta{i}": c for i, c in enumerate(s.metadata)})
        return want

    def check(self) -> None:
        """Connect and check every named column exists, naming the ones that do not."""
        s = self.spec
        src: Any
        if s.table:
            src = self._retrying("reading the table's columns", self._reflect)
            present = {c.name: c for c in src.columns}
        else:
            sub = sa.text(s.query)

            def columns() -> list[str]:
                with self._connect() as conn:
                    probe = sa.select(sa.text("*")).select_from(
                        sa.text(f"({s.query}) AS semsearch_src")).limit(0)
                    return list(conn.execute(probe).keys())
            names = self._retrying("running the query", columns)
            src = sub.columns(*[sa.column(n) for n in names]).subquery("semsearch_src")
            present = {n: src.c[n] for n in names}
        missing = [c for c in self._wanted().values() if c not in present]
        if missing:
            raise SourceError(
                f"{self.name}: no column(s) {', '.join(repr(m) for m in missing)}; it has "
                f"{', '.join(sorted(present))}")
        self._from = src
        self._cols = {key: present[col] for key, col in self._wanted().items()}

    def _reflect(self) -> Any:
        """The table's columns with their reflected types (which convert values, e.g. SQLite
        timestamps to datetimes) under their true names: SQLAlchemy's MySQL reflection leaves
        a backtick in a name doubled (`` we``ird `` for we`ird), so names come from the
        database's own answer to ``SELECT *``, which lists columns in the same order."""
        schema, _, table = self.spec.table.rpartition(".")
        with self._connect() as conn:
            try:
                reflected = sa.Table(table, sa.MetaData(), schema=schema or None,
                                     autoload_with=conn)
            except sa_exc.NoSuchTableError:
                raise SourceError(f"{self.name}: no table {self.spec.table!r}") from None
            names = list(conn.execute(
                sa.select(sa.text("*")).select_from(reflected).limit(0)).keys())
        cols = list(reflected.columns)
        if len(names) != len(cols):
            return reflected
        return sa.table(table, *[sa.column(n, c.type) for n, c in zip(names, cols, strict=True)],
                        schema=schema or None)

    # -- reading -----------------------------------------------------------------------
    def _connect(self) -> sa.Connection:
        try:
            conn = self._engine.connect()
        except (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError) as exc:
            raise _Unreachable(exc) from exc
        self._connected = True
        return conn

    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """``fn`` again, after a pause, when the connection was lost (SQLAlchemy marks a
        disconnect with ``connection_invalidated``) or could not be made; any other error
        of the database at once, as a SourceError carrying its message."""
        delay = 0.5
        for attempt in range(self.spec.retries + 1):
            try:
                return fn()
            except _Unreachable as exc:
                cause: BaseException = exc.cause
            except sa_exc.DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise self._failed(what, exc) from None
                cause = exc
            except (sa_exc.SQLAlchemyError, UnicodeError) as exc:
                raise self._failed(what, exc) from None
            if attempt == self.spec.retries:
                how = (f"the source database went away while {what} after {self.rows_read} "
                       "rows") if self._connected else \
                    f"cannot connect to the source database while {what}"
                raise SourceError(f"{self.name}: {how} ({self.spec.retries} retries): "
                                  f"{self._message(cause)}") from None
            log.warning("source %s: %s; retrying in %.1fs", self.name, self._message(cause),
                        delay)
            self._engine.dispose()
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _failed(self, what: str, exc: BaseException) -> SourceError:
        after = f" after {self.rows_read} rows" if self.rows_read else ""
        return SourceError(f"{self.name}: error while {what}{after}: {self._message(exc)}")

    def _message(self, exc: BaseException) -> str:
        """The database's own first line, with the URL's password never in it."""
        msg = _first_line(exc)
        return msg.replace(self._secret, "***") if len(self._secret) >= 4 else msg

    def _select(self) -> Any:
        if self._from is None:
            self.check()
        return sa.select(*[c.label(k) for k, c in self._cols.items()])

    def _since_clause(self, since: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        ts = decode_value(since["ts"])
        start = step_back(ts, self.spec.lookback_seconds)
        return ts, decode_value(since["id"]), start

    def count(self, since: Mapping[str, Any] | None) -> int | None:
        q = sa.select(sa.func.count()).select_from(self._select().subquery())
        if since is not None and self.incremental:
            _, _, start = self._since_clause(since)
            up = self._cols["updated_at"]
            q = sa.select(sa.func.count()).select_from(
                self._select().where(up.is_not(None), up >= start).subquery())

        def run() -> int:
            with self._connect() as conn:
                return int(conn.execute(q).scalar_one())
        return self._retrying("counting rows", run)

    def head(self) -> Mapping[str, Any] | None:
        """The newest ``(updated_at, id)`` now: a first or full read resumes after it."""
        if not self.incremental:
            return None
        up, idc = self._cols["updated_at"], self._cols["id"]
        q = sa.select(up, idc).where(up.is_not(None)).order_by(up.desc(), idc.desc()).limit(1)

        def run() -> Any:
            with self._connect() as conn:
                return conn.execute(q).first()
        row = self._retrying("finding the newest row", run)
        return None if row is None else {"ts": encode_value(row[0]), "id": encode_value(row[1])}

    def rows(self, since: Mapping[str, Any] | None,
             batch_size: int) -> Iterator[list[SourceRow]]:
        """Without ``since`` (a first or full read) every row, by id; with it, rows changed
        since, by ``(updated_at, id)``, each carrying the position after it."""
        base = self._select()
        idc = self._cols["id"]
        if since is None or not self.incremental:
            last: Any = None
            while True:
                q = base.order_by(idc).limit(batch_size)
                if last is not None:
                    q = q.where(idc > last)
                page = self._page(q)
                if not page:
                    return
                last = page[-1]["id"]
                yield [self._row(r, None) for r in page]
        up = self._cols["updated_at"]
        mark_ts, mark_id, start = self._since_clause(since)
        key: tuple[Any, Any] | None = None
        while True:
            q = base.where(up.is_not(None)).order_by(up, idc).limit(batch_size)
            if key is None:
                q = q.where(up >= start) if start != mark_ts else \
                    q.where(sa.or_(up > mark_ts, sa.and_(up == mark_ts, idc > mark_id)))
            else:
                q = q.where(sa.or_(up > key[0], sa.and_(up == key[0], idc > key[1])))
            page = self._page(q)
            if not page:
                return
            key = (page[-1]["updated_at"], page[-1]["id"])
            out = []
            for r in page:
                # Never move the watermark back: rows re-read in the look-back window
                # keep the previous one.
                behind = (r["updated_at"], r["id"]) < (mark_ts, mark_id) \
                    if _comparable(r["updated_at"], mark_ts) else False
                pos = since if behind else {"ts": encode_value(r["updated_at"]),
                                            "id": encode_value(r["id"])}
                out.append(self._row(r, pos))
            yield out

    def _page(self, q: Any) -> list[dict[str, Any]]:
        def run() -> list[dict[str, Any]]:
            with self._connect() as conn:
                return [dict(r._mapping) for r in conn.execute(q)]
        page = self._retrying("reading rows", run)
        self.rows_read += len(page)
        return page

    def _row(self, r: Mapping[str, Any], position: Mapping[str, Any] | None) -> SourceRow:
        s = self.spec
        doc_id = str(r["id"]).strip() if r["id"] is not None else ""
        parts = [r[f"text{i}"] for i in range(len(s.text))]
        problem = None
        if not doc_id:
            problem = f"column {s.id!r} is NULL or empty"
        elif all(p is None for p in parts):
            problem = f"text column {', '.join(s.text)!r} is NULL"
        text = "\n\n".join(str(p) for p in parts if p is not None)
        if problem is None and not text.strip():
            problem = f"text column {', '.join(s.text)!r} is empty"
        if problem is None and self._max_chars and len(text) > self._max_chars:
            problem = (f"text has {len(text):,} characters; the limit is {self._max_chars:,} "
                       "(SEMSEARCH_MAX_TEXT_CHARS)")
        title = r.get("title")
        meta = {c: _plain(r[f"meta{i}"]) for i, c in enumerate(s.metadata)}
        doc = Document(id=doc_id, text=text, title="" if title is None else str(title),
                       metadata=meta)
        return SourceRow(document=doc, deleted=_truthy(r.get("deleted")), problem=problem,
                         position=position)

    def close(self) -> None:
        self._engine.dispose()


def _comparable(a: Any, b: Any) -> bool:
    try:
        _ = a < b
    except TypeError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0][:300]

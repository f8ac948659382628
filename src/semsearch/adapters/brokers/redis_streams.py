"""Change events from a Redis Stream (Redis >= 7), read through a consumer group.

Producers add one entry per event, its JSON in a field named ``event``::

    XADD doc-changes * event '{"op":"delete","id":"p-1","version":18}'

An entry without that field is delivered with all its fields as one JSON object for a body,
so it fails to parse and is dead-lettered with the parser's reason instead of vanishing.

Redis has no notion of a dead consumer: an entry delivered to a consumer stays in that
consumer's pending list until acknowledged. So ``receive`` takes, in this order:

1. this consumer's own pending entries (``XREADGROUP ... 0``), once after each connect:
   ``>`` never hands them out again, and after a reconnect (or a restart under the same
   ``--consumer`` name) nobody else would take them before ``redeliver_after``;
2. entries idle longer than ``redeliver_after`` in any consumer's pending list
   (``XAUTOCLAIM``): how a kill -9'd consumer's messages come back to the next live one;
3. new entries (``XREADGROUP ... >``), blocking only when 1 and 2 found nothing.

The consumer name defaults to host-pid-random, unique per adapter instance, because two
instances in one process must compete like two processes. ``close`` removes the consumer
from the group when it holds nothing pending, so restarts do not pile up names; one that
still holds entries is kept, or they could never be claimed.

Dead letters go to ``sub.dead_letter``, by default the stream ``<stream>:dead``: one
``XADD`` with fields ``event`` (the original body), ``reason``, ``id`` (the original entry
id) and ``stream``. The reply is the confirmation; the entry is as durable as the server's
persistence (AOF/RDB) makes it, and no replica is waited for.

``lag`` is the group's ``lag`` from ``XINFO GROUPS`` (entries not yet delivered to the
group); when Redis cannot tell (entries deleted inside the range) the entries after the
group's last delivered id are counted, up to 100 000 (beyond that: None).

``connect_timeout`` bounds connecting and every reply (the socket timeouts), so a server
that hangs raises BrokerUnavailableError instead of blocking forever; a blocking read
therefore waits at most 3/4 of it, returning [] earlier than ``timeout`` if need be.

``redis`` (redis-py) is imported only when this adapter is built."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from semsearch.core.events import Subscription
from semsearch.errors import BackendError, BrokerUnavailableError, InputError, NotFoundError
from semsearch.ports import Delivery

EVENT_FIELD = b"event"
_LAG_COUNT_LIMIT = 100_000
_PAGE = 1_000
_T = TypeVar("_T")


class RedisStreamSource:
    """``sub.url`` is ``redis://[:password@]host:port/db`` (``rediss://`` for TLS),
    ``sub.stream`` the stream's key, ``sub.group`` the consumer group."""

    def __init__(self, sub: Subscription) -> None:
        try:
            import redis
        except ImportError as exc:
            raise InputError("reading events from Redis needs the redis package: "
                             "pip install redis") from exc
        if not sub.stream:
            raise InputError("a Redis subscription needs --stream (the stream's key)")
        if not sub.group:
            raise InputError("a Redis subscription needs --group (the consumer group)")
        if sub.connect_timeout <= 0:
            raise InputError(f"the connect timeout must be positive, got {sub.connect_timeout}")
        self._redis: Any = redis
        self._sub = sub
        self._key = sub.stream
        self._group = sub.group
        self._consumer = sub.consumer or (
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}")
        self._dead = sub.dead_letter or f"{sub.stream}:dead"
        self._where, self._base = _describe(sub.url)
        self._idle_ms = max(1, round(sub.redeliver_after * 1000))
        self._block_cap_ms = max(1, int(sub.connect_timeout * 750))
        self._client: Any = None
        self._backlog: bytes | None = b"0"  # where re-reading own pending entries goes on
        self._cursor: bytes = b"0-0"  # XAUTOCLAIM's scan position in the pending list
        self._held: set[bytes] = set()  # delivered since connect, not acknowledged
        self._connect()

    @property
    def name(self) -> str:
        return f"{self._base} stream {self._key} group {self._group}"

    # -- the EventSource protocol --------------------------------------------------------

    def receive(self, max_items: int, timeout: float) -> list[Delivery]:
        if max_items <= 0:
            return []
        return self._call("reading", lambda: self._receive(max_items, timeout))

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        ids = [d.token for d in deliveries]
        if not ids:
            return
        # Tokens from before a reconnect are plain entry ids: XACK settles them all the
        # same (or counts 0 if someone else already did), so late acks are harmless.
        self._call("acknowledging", lambda: self._xack(ids))
        self._held.difference_update(ids)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        fields = {"event": delivery.body, "reason": reason, "id": delivery.token,
                  "stream": self._key}
        self._call("dead-lettering", lambda: self._live().xadd(self._dead, fields))

    def lag(self) -> int | None:
        return self._call("reading the group's lag", self._lag)

    def reconnect(self) -> None:
        self._drop_client()
        self._backlog, self._cursor = b"0", b"0-0"
        self._held.clear()
        self._connect()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            if not client.xpending_range(self._key, self._group, "-", "+", 1,
                                         consumername=self._consumer):
                client.xgroup_delconsumer(self._key, self._group, self._consumer)
        except (self._redis.RedisError, OSError):
            pass  # tidying only: a consumer left behind costs a name in XINFO CONSUMERS
        finally:
            client.close()

    # -- connecting ----------------------------------------------------------------------

    def _connect(self) -> None:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeout = self._sub.connect_timeout
        try:
            # No client-side retries: the consumer's own backoff decides when to try again,
            # and retries would multiply the time a hung server holds a call.
            client = self._redis.Redis.from_url(
                self._sub.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0))
        except ValueError as exc:
            raise InputError(f"bad Redis URL {self._base}: {_scrub(str(exc), self._sub.url)}"
                             ) from None
        self._client = client
        try:
            self._call("connecting", self._ensure_group)
        except BaseException:
            self._drop_client()
            raise

    def _ensure_group(self) -> None:
        client = self._live()
        if self._sub.create:
            try:  # from "0": what producers added before the group existed is read too
                client.xgroup_create(self._key, self._group, id="0", mkstream=True)
            except self._redis.ResponseError as exc:
                if not str(exc).startswith("BUSYGROUP"):
                    raise
            return
        try:
            groups = client.xinfo_groups(self._key)
        except self._redis.ResponseError as exc:
            if "no such key" not in str(exc).lower():
                raise
            raise InputError(f"the Redis stream {self._key!r} does not exist at {self._where}"
                             f"; pass --create to declare it (with consumer group "
                             f"{self._group!r})") from None
        if not any(_text(g["name"]) == self._group for g in groups):
            raise InputError(f"the Redis stream {self._key!r} has no consumer group "
                             f"{self._group!r}; pass --create to declare it")

    def _live(self) -> Any:
        if self._client is None:
            raise BrokerUnavailableError(f"Redis at {self._where}: not connected (closed, "
                                         "or a reconnect failed)")
        return self._client

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(self._redis.RedisError, OSError):
                client.close()

    # -- reading -------------------------------------------------------------------------

    def _receive(self, max_items: int, timeout: float) -> list[Delivery]:
        got: list[Delivery] = []
        if self._backlog is not None:
            got += self._own_pending(max_items)
        if len(got) < max_items:
            got += self._claim(max_items - len(got))
        if len(got) < max_items:
            block = None if got or timeout <= 0 else max(
                1, min(round(timeout * 1000), self._block_cap_ms))
            reply = self._live().xreadgroup(self._group, self._consumer, {self._key: ">"},
                                            count=max_items - len(got), block=block)
            got += self._deliveries(_entries(reply), redelivered=False)
        return got

    def _own_pending(self, count: int) -> list[Delivery]:
        assert self._backlog is not None
        reply = self._live().xreadgroup(self._group, self._consumer,
                                        {self._key: self._backlog}, count=count)
        entries = _entries(reply)
        self._backlog = entries[-1][0] if len(entries) == count else None
        return self._deliveries(entries, redelivered=True)

    def _claim(self, count: int) -> list[Delivery]:
        reply = self._live().xautoclaim(self._key, self._group, self._consumer,
                                        self._idle_ms, start_id=self._cursor, count=count)
        self._cursor = reply[0]
        # Our own entries idle that long are still being worked on by this process: taking
        # them again only resets their idle time, it is not a new delivery.
        fresh = [(i, f) for i, f in reply[1] if i not in self._held]
        return self._deliveries(fresh, redelivered=True)

    def _deliveries(self, entries: list[tuple[bytes, Any]],
                    redelivered: bool) -> list[Delivery]:
        out: list[Delivery] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if not fields:  # deleted from the stream (XDEL, trimming) while pending
                gone.append(entry_id)
                continue
            out.append(Delivery(body=_body(fields), token=entry_id, redelivered=redelivered))
            self._held.add(entry_id)
        if gone:
            self._xack(gone)
        return out

    def _xack(self, ids: Sequence[bytes]) -> None:
        pipe = self._live().pipeline(transaction=False)
        for start in range(0, len(ids), _PAGE):
            pipe.xack(self._key, self._group, *ids[start:start + _PAGE])
        pipe.execute()

    def _lag(self) -> int | None:
        for group in self._live().xinfo_groups(self._key):
            if _text(group["name"]) != self._group:
                continue
            if group.get("lag") is not None:
                return int(group["lag"])
            return self._count_after(group["last-delivered-id"])
        raise self._gone()

    def _count_after(self, last_id: bytes) -> int | None:
        start, seen = b"(" + last_id, 0
        while seen < _LAG_COUNT_LIMIT:
            page = self._live().xrange(self._key, min=start, max="+", count=_PAGE)
            seen += len(page)
            if len(page) < _PAGE:
                return seen
            start = b"(" + page[-1][0]
        return None

    # -- errors --------------------------------------------------------------------------

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        """Run one exchange with Redis, turning its failures into semsearch's errors: a
        connection that is refused, drops or times out is BrokerUnavailableError (the
        consumer backs off and reconnects), a deleted group NotFoundError."""
        r = self._redis
        try:
            return fn()
        except r.AuthenticationError as exc:
            raise InputError(f"Redis at {self._where} refused the URL's credentials: "
                             f"{exc}") from None
        except (r.ConnectionError, r.TimeoutError, OSError) as exc:
            raise BrokerUnavailableError(f"Redis at {self._where}: {what} failed: "
                                         f"{exc or type(exc).__name__}") from None
        except r.ResponseError as exc:
            raise self._response_error(what, exc) from None

    def _response_error(self, what: str, exc: Exception) -> Exception:
        r, text = self._redis.exceptions, str(exc)
        if text.startswith("NOGROUP") or text.lower().startswith("no such key"):
            return self._gone()
        if isinstance(exc, r.ReadOnlyError | r.OutOfMemoryError | r.MasterDownError
                      | r.TryAgainError):
            # A failover in progress or a full server: retrying later can succeed.
            return BrokerUnavailableError(f"Redis at {self._where}: {what} failed: {text}")
        if text.startswith("WRONGTYPE"):
            return InputError(f"the Redis key {self._key!r} (or the dead-letter key "
                              f"{self._dead!r}) holds something other than a stream")
        if isinstance(exc, r.NoPermissionError):
            return InputError(f"Redis at {self._where} does not let this user run what "
                              f"{what} needs: {text}")
        return BackendError(f"Redis at {self._where}: {what} failed: {text}")

    def _gone(self) -> NotFoundError:
        return NotFoundError(f"the Redis stream {self._key!r} or its consumer group "
                             f"{self._group!r} no longer exists; pass --create to declare "
                             "it again")


def _describe(url: str) -> tuple[str, str]:
    """``host:port`` for error messages and the URL without its password for ``name``."""
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError as exc:
        raise InputError(f"bad Redis URL: {_scrub(str(exc), url)}") from None
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    db = parts.path.strip("/") or "0"
    if not db.isdigit():
        raise InputError(f"bad Redis URL: the database must be a number, got {db[:40]!r}")
    return f"{host}:{port}", f"{parts.scheme.lower()}://{host}:{port}/{db}"


def _scrub(text: str, url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[tuple[bytes, Any]]:
    """The entries of an XREADGROUP reply on one stream (RESP2: a list of [key, entries];
    RESP3: a map of key to entries)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values()))[0])
    return list(reply[0][1])


def _body(fields: dict[bytes, bytes]) -> bytes:
    if EVENT_FIELD in fields:
        return fields[EVENT_FIELD]
    shown = {_text(k): _text(v) for k, v in fields.items()}
    return json.dumps(shown, ensure_ascii=False).encode()

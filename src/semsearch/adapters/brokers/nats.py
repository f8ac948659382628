"""Change events from a NATS JetStream stream, read through a durable pull consumer.

``sub.stream`` is the stream, ``sub.subject`` an optional filter subject, ``sub.group`` the
durable consumer that every process of one subscription pulls from (competing consumers:
JetStream hands each message to one pull request at a time). The consumer is created when
missing (explicit acks, ``ack_wait = redeliver_after``, deliver all), since it is this
subscription's own bookkeeping; a missing *stream* is the user's data missing, so it is an
error unless ``create``, which adds it with file storage and the subject ``sub.subject``
(or ``<stream>.>``). Retention stays the stream's own (limits by default): acked messages
are kept until the stream's limits drop them.

Pulling is done by hand on one inbox per connection rather than with nats-py's ``fetch``:
``receive`` asks for one message with a lingering request that expires with ``timeout``,
then for the rest with a ``no_wait`` request, which answers at once. A ``fetch`` of many
keeps its lingering request open until it is full or expires, so it waits the whole
timeout when fewer messages are there. Each request gets its own reply subject, so a late
status of an expired request is not taken for the answer to the current one; a message
that arrives for an expired request is kept and returned by the next ``receive``.

Acks go to each message's ``$JS.ACK`` reply subject on whichever connection is current
(JetStream does not care which one), the last one as a request so the server has
processed them all when ``ack`` returns; acking a stale delivery after a reconnect is
therefore harmless. ``reconnect`` and ``close`` hand back (``-NAK``) what was delivered
and not acknowledged, so it is redelivered at once instead of after ``redeliver_after``;
after a kill -9 the consumer's ack wait brings it back.

Dead letters are published with JetStream (the publish waits for the stream's PubAck) to
the subject ``semsearch.dead.<stream>`` in the stream ``sub.dead_letter`` (default
``<stream>_DEAD``), which is created (file storage) when missing: it is semsearch's own
output. Headers: ``Semsearch-Reason`` (newlines become spaces), ``Semsearch-Stream``,
``Semsearch-Subject`` and ``Semsearch-Sequence`` of the original, and a ``Nats-Msg-Id``
so a message dead-lettered twice (a crash before its ack) is stored once.

``lag`` is the consumer's ``num_pending``: messages not yet delivered to the subscription
(delivered-and-unacked ones and naked ones waiting for redelivery are not counted).

The client never reconnects by itself (``allow_reconnect=False``): a lost connection is
raised as BrokerUnavailableError, and the consumer's backoff decides when to
``reconnect``. nats-py is asyncio-only, so each adapter runs one event loop in a daemon
thread and the synchronous methods wait on it with a timeout: nothing blocks forever, and
a signal handler in the main thread still runs while a method waits.

``nats`` (nats-py, the ``nats`` extra) is imported only when this adapter is built."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from semsearch.core.events import Subscription
from semsearch.errors import (
    BrokerUnavailableError,
    InputError,
    NotFoundError,
    SemsearchError,
)
from semsearch.ports import Delivery

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

DEFAULT_PORT = 4222
DEAD_SUBJECT_PREFIX = "semsearch.dead."
MAX_ACK_PENDING = 100_000  # delivered and unacked, all processes together: many batches
MAX_REASON_CHARS = 4_000
PING_SECONDS = 10  # a server that stops answering is noticed within ~3 pings
REST_WAIT = 1.0  # longest wait for the answer to a no_wait request (it comes at once)
_NAME_RE = re.compile(r"^[^\s.*>/\\]+$")  # JetStream stream and consumer names
_STREAM_NOT_FOUND = 10059
_CONSUMER_NOT_FOUND = 10014
_T = TypeVar("_T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Token:
    """What acking or dead-lettering a delivery needs: its ack subject, and where it came
    from for the dead letter's headers."""

    reply: str
    subject: str
    sequence: int | None


class _Lost:
    """Put on the inbox queue when the connection closes, to wake a waiting receive."""


class NatsSource:
    """``sub.url`` is ``nats://[user:password@]host:port`` (``tls://`` for TLS)."""

    def __init__(self, sub: Subscription) -> None:
        try:
            import nats  # noqa: F401
        except ImportError as exc:
            raise InputError("reading events from NATS needs the nats-py package: "
                             "pip install 'semsearch[nats]'") from exc
        self._sub = sub
        self._stream, self._group = _names(sub)
        self._subject = sub.subject.strip() if sub.subject else None
        if self._subject is not None and not _valid_subject(self._subject):
            raise InputError(f"--subject {self._subject[:80]!r} is not a NATS subject")
        self._dead_stream = sub.dead_letter or f"{self._stream}_DEAD"
        if not _NAME_RE.match(self._dead_stream):
            raise InputError(f"--dead-letter {self._dead_stream[:80]!r} is not a JetStream "
                             "stream name (no spaces, '.', '*', '>' or slashes)")
        self._dead_subject = DEAD_SUBJECT_PREFIX + self._stream
        if sub.connect_timeout <= 0:
            raise InputError(f"the connect timeout must be positive, got {sub.connect_timeout}")
        if sub.redeliver_after <= 0:
            raise InputError(f"redeliver_after must be positive, got {sub.redeliver_after}")
        self._url, self._where = _server(sub.url)
        scheme = sub.url.split("://", 1)[0].lower()
        filtered = f" subject {self._subject}" if self._subject else ""
        self._name = (f"{scheme}://{self._where} stream {self._stream}{filtered} "
                      f"consumer {self._group}")
        self._timeout = float(sub.connect_timeout)  # connect, and every request's answer
        self._nc: Client | None = None
        self._inbox = ""
        self._requests = 0
        self._arrived: asyncio.Queue[Msg | _Lost] | None = None
        self._held: dict[str, None] = {}  # ack subjects handed out and not acked (ordered)
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"nats {self._stream}")
        self._thread.start()
        try:
            self._call(self._open(), self._timeout * 4, "connect")
        except BaseException:
            self._stop_loop()
            raise

    @property
    def name(self) -> str:
        return self._name

    # -- the port --------------------------------------------------------------------------
    def receive(self, max_items: int, timeout: float) -> list[Delivery]:
        if max_items < 1:
            return []
        timeout = max(0.0, timeout)
        return self._call(self._receive(max_items, timeout),
                          timeout + REST_WAIT + self._timeout, "receive")

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        replies = [d.token.reply for d in deliveries if isinstance(d.token, _Token)]
        if replies:
            self._call(self._ack(replies), self._timeout * 2, "acknowledge")

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        if not isinstance(delivery.token, _Token):
            raise InputError("not a delivery of this NATS subscription")
        self._call(self._dead_letter(delivery.body, delivery.token, reason),
                   self._timeout * 2, "dead-letter")

    def lag(self) -> int | None:
        return self._call(self._lag(), self._timeout * 2, "consumer info")

    def reconnect(self) -> None:
        if self._closed:
            raise BrokerUnavailableError(f"NATS at {self._where}: the source is closed")
        with contextlib.suppress(SemsearchError):
            self._call(self._disconnect(), self._timeout, "disconnect")
        self._call(self._open(), self._timeout * 4, "connect")
        with contextlib.suppress(SemsearchError):
            self._call(self._hand_back(), self._timeout, "hand back")

    def close(self) -> None:
        if self._closed:
            return
        try:
            with contextlib.suppress(SemsearchError):
                self._call(self._hand_back(), self._timeout, "hand back")
            with contextlib.suppress(SemsearchError):
                self._call(self._disconnect(), self._timeout, "disconnect")
        finally:
            self._closed = True
            self._stop_loop()

    # -- running coroutines on the adapter's loop --------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, _T], wait: float, what: str) -> _T:
        """Run ``coro`` on the loop thread and wait at most ``wait`` seconds; every failure
        of the connection becomes BrokerUnavailableError naming the server and the step."""
        if self._closed:
            coro.close()
            raise BrokerUnavailableError(f"NATS at {self._where}: {what} on a closed source")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(wait)
        except SemsearchError:
            raise
        except Exception as exc:
            if not future.done():  # our wait ran out, not the coroutine
                future.cancel()
                raise BrokerUnavailableError(f"NATS at {self._where}: {what} timed out "
                                             f"after {wait:.1f} s") from None
            raise BrokerUnavailableError(
                f"NATS at {self._where}: {what} failed: {_describe(exc)}") from None
        except BaseException:  # KeyboardInterrupt while waiting: stop the work too
            future.cancel()
            raise

    def _stop_loop(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    # -- coroutines (all run on the loop thread, which alone touches the state below) ------
    async def _open(self) -> None:
        import nats
        from nats.errors import Error as NatsError
        from nats.errors import NoServersError

        errors: list[BaseException] = []

        async def quiet(exc: Exception) -> None:
            errors.append(exc)
            log.debug("nats %s: %s", self._where, _describe(exc))

        arrived: asyncio.Queue[Msg | _Lost] = asyncio.Queue()

        async def lost() -> None:
            arrived.put_nowait(_Lost())

        try:
            nc = await asyncio.wait_for(nats.connect(
                servers=[self._url], connect_timeout=max(1, math.ceil(self._timeout)),
                # nats-py retries the first connect forever when max_reconnect_attempts
                # is 0: 1 means two quick tries, then it gives up.
                allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0,
                ping_interval=PING_SECONDS, max_outstanding_pings=3,
                error_cb=quiet, disconnected_cb=lost, closed_cb=lost,
                name=f"semsearch {self._stream}/{self._group}"), self._timeout)
        except (OSError, TimeoutError, NatsError) as exc:
            cause = errors[-1] if isinstance(exc, NoServersError) and errors else exc
            raise BrokerUnavailableError(
                f"NATS at {self._where}: cannot connect: {_describe(cause)}") from None
        try:
            await self._declare(nc)
            inbox = nc.new_inbox()

            async def on_msg(msg: Msg) -> None:
                arrived.put_nowait(msg)

            await nc.subscribe(f"{inbox}.*", cb=on_msg)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), self._timeout)
            raise
        self._nc, self._inbox, self._arrived = nc, inbox, arrived

    async def _declare(self, nc: Client) -> None:
        """The stream (or the missing-stream error), the durable consumer and the
        dead-letter stream; JetStream answers that are a user's mistake become InputError."""
        from nats.js.errors import APIError
        from nats.js.errors import NotFoundError as JsNotFound

        js = nc.jetstream(timeout=self._timeout)
        try:
            await js.stream_info(self._stream)
        except JsNotFound:
            if not self._sub.create:
                raise NotFoundError(
                    f"NATS JetStream stream {self._stream!r} does not exist at {self._where}; "
                    "pass --create to declare it") from None
            await self._add_stream(js, self._stream, self._subject or f"{self._stream}.>")
        except APIError as exc:
            raise InputError(f"NATS stream {self._stream!r}: {_describe(exc)}") from None
        await self._ensure_consumer(js)
        await self._ensure_dead_letter_stream(js)

    async def _add_stream(self, js: Any, name: str, subject: str) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import APIError

        try:
            await js.add_stream(StreamConfig(name=name, subjects=[subject],
                                             storage=StorageType.FILE))
        except APIError as exc:
            raise InputError(f"cannot create the NATS stream {name!r} for subject "
                             f"{subject!r}: {_describe(exc)}") from None

    async def _ensure_consumer(self, js: Any) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import APIError
        from nats.js.errors import NotFoundError as JsNotFound

        where = f"durable consumer {self._group!r} of stream {self._stream!r}"
        try:
            info = await js.consumer_info(self._stream, self._group)
        except JsNotFound:
            config = ConsumerConfig(
                name=self._group, durable_name=self._group, ack_policy=AckPolicy.EXPLICIT,
                ack_wait=float(self._sub.redeliver_after), deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=MAX_ACK_PENDING, filter_subject=self._subject)
            try:
                await js.add_consumer(self._stream, config=config)
            except APIError as exc:
                raise InputError(f"cannot create the {where}: {_describe(exc)}") from None
            return
        config = info.config
        if config.deliver_subject:
            raise InputError(f"the {where} is a push consumer; semsearch pulls: use another "
                             "--group")
        if config.ack_policy != AckPolicy.EXPLICIT:
            raise InputError(f"the {where} does not use explicit acks; use another --group")
        if self._subject and (config.filter_subject or None) != self._subject:
            raise InputError(f"the {where} filters {config.filter_subject or 'nothing'!r}, "
                             f"not {self._subject!r}; use another --group")

    async def _ensure_dead_letter_stream(self, js: Any) -> None:
        from nats.js.errors import NotFoundError as JsNotFound

        try:
            info = await js.stream_info(self._dead_stream)
        except JsNotFound:
            await self._add_stream(js, self._dead_stream, self._dead_subject)
            return
        subjects = info.config.subjects or []
        if not any(_subject_matches(s, self._dead_subject) for s in subjects):
            raise InputError(f"the dead-letter stream {self._dead_stream!r} does not take the "
                             f"subject {self._dead_subject!r} (its subjects: "
                             f"{', '.join(subjects) or 'none'}); add it or pass another "
                             "--dead-letter")

    def _connection(self) -> Client:
        nc = self._nc
        if nc is None or nc.is_closed or not nc.is_connected:
            raise BrokerUnavailableError(f"NATS at {self._where}: the connection is lost")
        return nc

    async def _pull(self, nc: Client, batch: int, expires: float | None) -> str:
        """Ask the consumer for ``batch`` messages: lingering until ``expires`` seconds, or
        answered at once (``no_wait``). Returns the request's own reply subject."""
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        request: dict[str, Any] = {"batch": batch}
        if expires is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(expires * 1e9)
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._group}",
                         json.dumps(request).encode(), reply=reply)
        return reply

    async def _receive(self, max_items: int, timeout: float) -> list[Delivery]:
        nc = self._connection()
        assert self._arrived is not None
        got: list[Msg] = []
        self._take_waiting(got, max_items)
        if not got:
            # Expire a little before the caller's deadline, so the server's answer (a
            # message or 408) normally arrives while we still listen.
            lingering = timeout - 0.02 if timeout > 0.05 else None
            reply = await self._pull(nc, 1, lingering)
            await self._collect(got, 1, reply, time.monotonic() + timeout)
        if got and len(got) < max_items:
            reply = await self._pull(nc, max_items - len(got), None)
            await self._collect(got, max_items, reply, time.monotonic() + REST_WAIT)
        deliveries = [self._delivery(m) for m in got]
        for d in deliveries:
            self._held[d.token.reply] = None
        return deliveries

    def _take_waiting(self, got: list[Msg], limit: int) -> None:
        """Messages already here (answers to expired requests): no need to ask again."""
        assert self._arrived is not None
        while len(got) < limit and not self._arrived.empty():
            msg = self._arrived.get_nowait()
            if isinstance(msg, _Lost):
                raise BrokerUnavailableError(f"NATS at {self._where}: the connection is lost")
            if _status(msg) is None:
                got.append(msg)

    async def _collect(self, got: list[Msg], limit: int, reply: str, deadline: float) -> None:
        """Messages until ``limit``, the status that ends request ``reply``, or the
        deadline. Messages for older requests count too; their statuses do not."""
        assert self._arrived is not None
        while len(got) < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                msg = await asyncio.wait_for(self._arrived.get(), left)
            except TimeoutError:
                return
            if isinstance(msg, _Lost):
                raise BrokerUnavailableError(f"NATS at {self._where}: the connection is lost")
            status = _status(msg)
            if status is None:
                got.append(msg)
            elif msg.subject == reply:
                if status == "409":  # consumer deleted, leadership change, too many pulls
                    description = (msg.headers or {}).get("Description", "")
                    raise BrokerUnavailableError(
                        f"NATS at {self._where}: the {self._group!r} consumer of stream "
                        f"{self._stream!r} answered {status} {description}".rstrip())
                return  # 404 no messages, 408 expired: the request is over

    def _delivery(self, msg: Msg) -> Delivery:
        try:
            meta = msg.metadata
            sequence: int | None = meta.sequence.stream
            redelivered = meta.num_delivered > 1
        except Exception:  # a reply subject nats-py cannot parse: still ackable
            sequence, redelivered = None, False
        return Delivery(body=bytes(msg.data), token=_Token(msg.reply, msg.subject, sequence),
                        redelivered=redelivered)

    async def _ack(self, replies: list[str]) -> None:
        nc = self._connection()
        for reply in replies[:-1]:
            await nc.publish(reply, b"+ACK")
        # As a request: the server answers once it has processed it (and the ones before).
        await nc.request(replies[-1], b"+ACK", timeout=self._timeout)
        for reply in replies:
            self._held.pop(reply, None)

    async def _dead_letter(self, body: bytes, token: _Token, reason: str) -> None:
        from nats.js.errors import APIError

        nc = self._connection()
        js = nc.jetstream(timeout=self._timeout)
        text = " ".join(reason.split())[:MAX_REASON_CHARS] or "no reason given"
        headers = {"Semsearch-Reason": text, "Semsearch-Stream": self._stream,
                   "Semsearch-Subject": token.subject}
        if token.sequence is not None:
            headers["Semsearch-Sequence"] = str(token.sequence)
            headers["Nats-Msg-Id"] = f"{self._stream}.{self._group}.{token.sequence}"
        try:
            await js.publish(self._dead_subject, body, stream=self._dead_stream,
                             headers=headers)
        except APIError as exc:  # refused by the stream (limits, wrong stream): not a drop
            raise BrokerUnavailableError(
                f"NATS at {self._where}: the dead-letter stream {self._dead_stream!r} "
                f"refused the message: {_describe(exc)}") from None

    async def _lag(self) -> int | None:
        nc = self._connection()
        info = await nc.jetstream(timeout=self._timeout).consumer_info(self._stream,
                                                                       self._group)
        pending = info.num_pending
        return int(pending) if pending is not None else None

    async def _hand_back(self) -> None:
        """``-NAK`` what was delivered (or arrived) and not acked: redelivered at once
        rather than after the ack wait. Through the current connection, which may be a
        newer one than the messages came on."""
        self._keep_arrived()
        nc = self._nc
        if not self._held or nc is None or nc.is_closed:
            return
        replies = list(self._held)
        self._held.clear()
        for reply in replies:
            await nc.publish(reply, b"-NAK")
        await nc.flush(timeout=max(1, math.ceil(self._timeout)))

    def _keep_arrived(self) -> None:
        """Messages that arrived and were never handed out count as held, so they are
        handed back too (the queue goes with its connection)."""
        if self._arrived is None:
            return
        while not self._arrived.empty():
            msg = self._arrived.get_nowait()
            if not isinstance(msg, _Lost) and _status(msg) is None and msg.reply:
                self._held[msg.reply] = None

    async def _disconnect(self) -> None:
        self._keep_arrived()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            await asyncio.wait_for(nc.close(), self._timeout)


def _names(sub: Subscription) -> tuple[str, str]:
    if not sub.stream:
        raise InputError("a NATS subscription needs --stream (the JetStream stream)")
    stream, group = sub.stream.strip(), (sub.group or "").strip()
    if not _NAME_RE.match(stream):
        raise InputError(f"--stream {stream[:80]!r} is not a JetStream stream name "
                         "(no spaces, '.', '*', '>' or slashes)")
    if not group or not _NAME_RE.match(group):
        raise InputError(f"--group {group[:80]!r} is not a JetStream consumer name "
                         "(no spaces, '.', '*', '>' or slashes)")
    return stream, group


def _server(url: str) -> tuple[str, str]:
    """The URL nats-py gets (credentials kept) and ``host:port`` for messages (never the
    credentials). One server: the client does not fail over by itself anyway."""
    if "," in url:
        raise InputError("--from takes one NATS server URL, not a list")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("nats", "tls") or not parts.hostname:
        raise InputError(f"a NATS URL is nats://host:port or tls://host:port "
                         f"(got {url.split('@')[-1][:80]!r})")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise InputError(f"the port in {url.split('@')[-1][:80]!r} is not a number "
                         "from 0 to 65535") from None
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    return url, f"{shown}:{port}"


def _valid_subject(subject: str) -> bool:
    tokens = subject.split(".")
    if any(not t or any(c.isspace() for c in t) for t in tokens):
        return False
    return all(t != ">" for t in tokens[:-1])


def _subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: ``*`` one token, ``>`` one or more at the end."""
    want, have = pattern.split("."), subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def _status(msg: Msg) -> str | None:
    """A JetStream status message's code (404, 408, 409, 100), or None for a message."""
    if msg.data or not msg.headers:
        return None
    status = msg.headers.get("Status")
    return str(status) if status else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    description = getattr(exc, "description", None)
    text = str(description or exc).strip()
    return text or type(exc).__name__

"""RabbitMQ as an EventSource: one durable queue, consumed with manual acks over pika's
BlockingConnection (``amqp://user:pass@host:5672/vhost``, ``amqps://`` for TLS).

- ``receive`` starts a consumer whose prefetch is exactly what was asked for and cancels it
  before returning, so this process never holds a message it has not handed over: a second
  consumer on the queue gets everything the first did not take (a long-lived consumer with a
  large prefetch would sit on messages while its batch is embedded). Messages pushed in the
  moment between the last read and the cancel are rejected back to their place in the queue
  (RabbitMQ marks them redelivered; versions make that harmless).
- Nothing is lost on a crash: RabbitMQ puts a closed connection's unacked messages back at
  once. A host that vanishes without closing is noticed by the heartbeat, about twice its
  interval, which is half of ``redeliver_after`` (kept within 5-60 s). A thread answers
  heartbeats between calls, so a batch that takes minutes to embed does not cost the
  connection (pika's blocking connection only speaks while it is called).
- Acks are per channel: a delivery from before a reconnect (or a replaced channel) is stale
  and acking it does nothing; the broker has already put it back.
- Dead letters go through the default exchange to the queue ``sub.dead_letter``, by default
  ``<queue>.dead``, declared durable the first time it is missing (so one poison message
  never stalls the consumer); published persistent, with publisher confirms, before the
  caller acks. The reason is the header ``x-semsearch-reason``, the source queue
  ``x-semsearch-queue``; the body and the original headers are kept.
- ``lag`` is the queue's ready-message count (a passive declare), not counting unacked ones.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import parse_qs, quote, urlsplit

from semsearch.core.events import Subscription
from semsearch.errors import BrokerUnavailableError, InputError, NotFoundError
from semsearch.ports import Delivery

log = logging.getLogger("semsearch.rabbitmq")
REASON_HEADER = "x-semsearch-reason"
QUEUE_HEADER = "x-semsearch-queue"
MAX_PREFETCH = 65_535  # basic.qos takes a 16-bit count
MAX_REASON_CHARS = 4_000
BLOCKED_TIMEOUT = 60.0  # a broker under a resource alarm blocks publishers; give up after this
# Properties a dead letter keeps; expiration is left out, or the dead letter would expire.
_KEPT = ("content_type", "content_encoding", "priority", "correlation_id", "message_id",
         "timestamp", "type", "user_id", "app_id")


@dataclass(frozen=True)
class _Token:
    channel: int  # which consume channel delivered it: tags mean nothing on another one
    tag: int
    properties: Any
    routing_key: str


class RabbitMqSource:
    def __init__(self, sub: Subscription) -> None:
        if not sub.queue or not sub.queue.strip():
            raise InputError("RabbitMQ needs the queue to consume: pass --queue NAME")
        import pika

        pika_log = logging.getLogger("pika")
        if pika_log.level == logging.NOTSET:  # every failure is raised to the caller, once;
            pika_log.setLevel(logging.CRITICAL)  # pika would log each one with a traceback
        self._pika = pika
        self._sub = sub
        self._queue = sub.queue
        self._dead = sub.dead_letter or f"{sub.queue}.dead"
        self._params, self._where, base = _parameters(pika, sub)
        self._name = f"{base} queue {self._queue}"
        self._lock = threading.RLock()
        self._conn: Any = None
        self._consume: Any = None
        self._admin: Any = None
        self._publish: Any = None
        self._channel_no = 0
        self._unacked: set[int] = set()
        self._stop = threading.Event()
        self._connect()
        self._pump = threading.Thread(target=self._keep_alive, daemon=True,
                                      name=f"rabbitmq-heartbeat-{self._queue}")
        self._pump.start()

    @property
    def name(self) -> str:
        return self._name

    # -- the port ---------------------------------------------------------------------------
    def receive(self, max_items: int, timeout: float) -> list[Delivery]:
        if max_items < 1:
            return []
        with self._lock, self._errors("receive"):
            ch = self._consuming()
            number, got = self._channel_no, list[Delivery]()

            def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
                self._unacked.add(method.delivery_tag)
                got.append(Delivery(body=body, redelivered=bool(method.redelivered),
                                    token=_Token(number, method.delivery_tag, props,
                                                 method.routing_key)))

            ch.basic_qos(prefetch_count=min(max_items, MAX_PREFETCH))
            tag = ch.basic_consume(self._queue, on_message)
            try:
                deadline = time.monotonic() + max(timeout, 0.0)
                while not got and (left := deadline - time.monotonic()) > 0:
                    self._conn.process_data_events(time_limit=left)
                while got and len(got) < max_items:  # what is already here, no waiting
                    seen = len(got)
                    self._conn.process_data_events(time_limit=0)
                    if len(got) == seen:
                        break
            except BaseException:
                with contextlib.suppress(Exception):
                    ch.basic_cancel(tag)
                raise
            ch.basic_cancel(tag)
            return got

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock, self._errors("ack"):
            tags = sorted({t.tag for d in deliveries if isinstance(t := d.token, _Token)
                           and t.channel == self._channel_no and t.tag in self._unacked})
            ch = self._consume
            if not tags or ch is None or not ch.is_open:
                return  # stale: the broker has put them back already
            if sum(1 for t in self._unacked if t <= tags[-1]) == len(tags):
                ch.basic_ack(tags[-1], multiple=True)  # they are all that is outstanding
            else:
                for t in tags:
                    ch.basic_ack(t)
            self._unacked.difference_update(tags)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        pika = self._pika
        token = delivery.token if isinstance(delivery.token, _Token) else None
        props = token.properties if token is not None else None
        kept = {k: getattr(props, k, None) for k in _KEPT} if props is not None else {}
        headers = dict(getattr(props, "headers", None) or {})
        headers[REASON_HEADER] = reason[:MAX_REASON_CHARS]
        headers[QUEUE_HEADER] = self._queue
        out = pika.BasicProperties(**kept, headers=headers,
                                   delivery_mode=pika.DeliveryMode.Persistent)
        with self._lock, self._errors("dead-letter"):
            ch = self._publishing()
            try:
                ch.basic_publish("", self._dead, delivery.body, out, mandatory=True)
            except pika.exceptions.UnroutableError:  # the dead-letter queue is missing
                ch.queue_declare(self._dead, durable=True)
                ch.basic_publish("", self._dead, delivery.body, out, mandatory=True)

    def lag(self) -> int | None:
        with self._lock, self._errors("lag"):
            ok = self._administering().queue_declare(self._queue, passive=True)
            return int(ok.method.message_count)

    def reconnect(self) -> None:
        with self._lock:
            self._shutdown()
            self._connect()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._shutdown()
        if self._pump is not threading.current_thread():
            self._pump.join(timeout=5)

    # -- connection and channels ------------------------------------------------------------
    def _connect(self) -> None:
        from pika.adapters.utils.connection_workflow import AMQPConnectorException

        errors = self._pika.exceptions
        user = self._params.credentials.username
        try:
            self._conn = self._pika.BlockingConnection(self._params)
        except (errors.ProbableAuthenticationError, errors.AuthenticationError):
            raise InputError(f"RabbitMQ at {self._where} refused the login of user {user!r}: "
                             "check the user and password in --from") from None
        except errors.ProbableAccessDeniedError:
            raise InputError(f"RabbitMQ at {self._where}: user {user!r} may not use virtual "
                             f"host {self._params.virtual_host!r}, or it does not exist") from None
        except (errors.AMQPError, AMQPConnectorException, OSError) as exc:
            raise BrokerUnavailableError(
                f"cannot connect to RabbitMQ at {self._where} within "
                f"{self._sub.connect_timeout:g} s: {_why(exc)}") from None
        try:
            with self._errors("declare"):
                ch = self._consuming()
                if self._sub.create:
                    ch.queue_declare(self._queue, durable=True)
                    ch.queue_declare(self._dead, durable=True)
                else:
                    ch.queue_declare(self._queue, passive=True)
        except BaseException:
            self._shutdown()
            raise

    def _open(self) -> Any:
        if self._conn is None or not self._conn.is_open:
            raise BrokerUnavailableError(f"the connection to RabbitMQ at {self._where} is "
                                         "closed; reconnect")
        return self._conn.channel()

    def _consuming(self) -> Any:
        if self._consume is None or not self._consume.is_open:
            self._consume = self._open()
            self._channel_no += 1  # delivery tags of the old channel are void now
            self._unacked.clear()
        return self._consume

    def _administering(self) -> Any:
        """A channel of its own for passive declares: a 404 closes the channel it ran on,
        and must not take the consumer's unacked deliveries with it."""
        if self._admin is None or not self._admin.is_open:
            self._admin = self._open()
        return self._admin

    def _publishing(self) -> Any:
        if self._publish is None or not self._publish.is_open:
            self._publish = self._open()
            self._publish.confirm_delivery()
        return self._publish

    def _shutdown(self) -> None:
        conn, self._conn = self._conn, None
        self._consume = self._admin = self._publish = None
        self._unacked.clear()
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()

    def _keep_alive(self) -> None:
        """Answer heartbeats while the caller is busy elsewhere (embedding a batch); when the
        caller holds the lock it is inside pika already, doing the same."""
        every = max(1.0, (self._params.heartbeat or 60) / 4)
        while not self._stop.wait(every):
            if not self._lock.acquire(blocking=False):
                continue
            try:
                if self._conn is not None and self._conn.is_open:
                    self._conn.process_data_events(time_limit=0)
            except Exception as exc:  # the next call sees the closed connection and says so
                log.debug("rabbitmq heartbeat: %s", _why(exc))
            finally:
                self._lock.release()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        errors = self._pika.exceptions
        try:
            yield
        except errors.ChannelClosedByBroker as exc:
            self._channel_error(exc, what)
        except (errors.AMQPError, OSError) as exc:
            raise BrokerUnavailableError(f"RabbitMQ at {self._where}: {what} failed: "
                                         f"{_why(exc)}") from None

    def _channel_error(self, exc: Any, what: str) -> NoReturn:
        code, text = exc.reply_code, str(exc.reply_text)[:300]
        if code == 404:
            raise NotFoundError(f"RabbitMQ queue {self._queue!r} does not exist on "
                                f"{self._name.split(' queue ')[0]} ({text}); pass --create "
                                "to declare it") from None
        if code in (403, 406):
            raise InputError(f"RabbitMQ at {self._where} refused to {what} on queue "
                             f"{self._queue!r}: {text}") from None
        raise BrokerUnavailableError(f"RabbitMQ at {self._where}: {what} failed: {code} "
                                     f"{text}") from None


def _parameters(pika: Any, sub: Subscription) -> tuple[Any, str, str]:
    """pika's parameters for ``sub.url`` with our timeouts, the ``host:port`` errors name,
    and the URL without credentials for the source's name."""
    url = sub.url.strip()
    shown = url.rsplit("@", 1)[-1][:200]
    usage = "use amqp://user:password@host:5672/vhost (amqps:// for TLS)"
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("amqp", "amqps") or not parts.hostname:
        raise InputError(f"--from {shown!r} is not a RabbitMQ URL; {usage}")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
        params = pika.URLParameters(url)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"--from {shown!r}: {str(exc)[:200]}; {usage}") from None
    query = parse_qs(parts.query)
    params.connection_attempts = 1
    params.socket_timeout = sub.connect_timeout
    params.stack_timeout = sub.connect_timeout
    if "heartbeat" not in query:
        params.heartbeat = int(min(60, max(5, math.ceil(sub.redeliver_after / 2))))
    if "blocked_connection_timeout" not in query:
        params.blocked_connection_timeout = BLOCKED_TIMEOUT
    # names the connection in rabbitmqctl and the management UI
    params.client_properties = {"connection_name": f"semsearch consume {sub.queue}"}
    host = f"[{params.host}]" if ":" in params.host else params.host
    where = f"{host}:{params.port}"
    base = f"{parts.scheme.lower()}://{where}/{quote(params.virtual_host, safe='')}"
    return params, where, base


def _why(exc: BaseException) -> str:
    """A one-line cause; pika wraps the socket error of a failed connect in tuples."""
    inner: BaseException = exc
    for _ in range(10):  # the error tuple, the workflow's list, the connector's cause
        nested = getattr(inner, "exception", None) or (getattr(inner, "exceptions", None)
                                                         or [None])[-1]
        if nested is None and inner.args and isinstance(inner.args[0], BaseException):
            nested = inner.args[0]
        if not isinstance(nested, BaseException):
            break
        inner = nested
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, TimeoutError) or "Timeout" in type(inner).__name__:
        return "timed out"
    text = str(inner) or type(inner).__name__
    return f"{type(inner).__name__}: {text}"[:300]

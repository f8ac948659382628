"""RabbitMQ specifics beyond the EventSource contract: stale acks after a reconnect, acks
that are not a prefix of what is outstanding, a receive that holds no more than it returns,
the dead-letter queue declared when missing (headers and properties kept), a queue deleted
under the consumer, a kill -9'd consumer, heartbeats answered while the caller is busy, and
a broker that drops the connection, hangs, or never speaks AMQP (through a loopback proxy
the test can cut or freeze)."""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pika
import pytest

from semsearch.adapters.brokers.rabbitmq import QUEUE_HEADER, REASON_HEADER, RabbitMqSource
from semsearch.core.events import Subscription
from semsearch.errors import BrokerUnavailableError, InputError, NotFoundError
from tests.brokers import BrokerHarness, require
from tests.brokers import delete_bodies as _bodies
from tests.brokers import drain as _drain
from tests.brokers.rabbitmq import HARNESS

pytestmark = pytest.mark.brokers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker() -> BrokerHarness:
    """This module's broker, for the shared ``sub`` fixture (tests/brokers)."""
    return require(HARNESS)


def _ready(queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(HARNESS.url))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


class _Proxy:
    """A loopback TCP relay to the broker that a test can cut (a dropped connection) or
    freeze (a broker that hangs: sockets open, nothing comes back)."""

    def __init__(self, upstream: int = 5672) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = upstream
        self.frozen = threading.Event()
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(a, b), daemon=True).start()

    def _relay(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not self.frozen.is_set():
                    dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


def test_stale_ack_after_reconnect_is_ignored_and_the_message_returns(
        sub: Subscription) -> None:
    HARNESS.publish(sub, _bodies(2))
    source = RabbitMqSource(sub)
    try:
        first = _drain(source, 2)
        assert [d.redelivered for d in first] == [False, False]
        source.reconnect()
        source.ack(first)  # tokens of the old connection: nothing happens
        back = _drain(source, 2)
        assert sorted(d.body for d in back) == sorted(_bodies(2))
        assert all(d.redelivered for d in back)
        source.ack(back)
        source.ack(back)  # twice: already settled, no channel error
        assert source.receive(5, 0.3) == []
    finally:
        source.close()
    assert HARNESS.unsettled(sub) == 0


def test_acks_out_of_order_settle_only_those(sub: Subscription) -> None:
    HARNESS.publish(sub, _bodies(5))
    source = RabbitMqSource(sub)
    try:
        got = _drain(source, 5)
        source.ack([got[1], got[3]])
        source.ack([got[0]])
        source.reconnect()
        back = _drain(source, 2)
        assert sorted(d.body for d in back) == sorted([got[2].body, got[4].body])
        source.ack(back)
    finally:
        source.close()
    assert HARNESS.unsettled(sub) == 0


def test_receive_holds_no_more_than_it_returns(sub: Subscription) -> None:
    HARNESS.publish(sub, _bodies(10))
    source = RabbitMqSource(sub)
    try:
        got = _drain(source, 3)
        assert len(got) == 3
        assert _ready(str(sub.queue)) == 7  # the rest stay on the queue for other consumers
        assert source.lag() == 7
        assert HARNESS.unsettled(sub) == 10
    finally:
        source.close()


def test_dead_letter_declares_its_queue_and_keeps_headers(sub: Subscription) -> None:
    sub = dataclasses.replace(sub, dead_letter=None)  # the default: <queue>.dead, missing
    conn = pika.BlockingConnection(pika.URLParameters(HARNESS.url))
    ch = conn.channel()
    ch.basic_publish("", str(sub.queue), b"poison", pika.BasicProperties(
        delivery_mode=2, content_type="application/json", headers={"trace": "t-1"},
        expiration="600000"))
    source = RabbitMqSource(sub)
    try:
        (d,) = _drain(source, 1)
        source.dead_letter(d, "the message is not JSON")
        source.ack([d])
    finally:
        source.close()
    _method, props, body = ch.basic_get(f"{sub.queue}.dead", auto_ack=True)
    conn.close()
    assert body == b"poison"
    assert props.headers[REASON_HEADER] == "the message is not JSON"
    assert props.headers[QUEUE_HEADER] == sub.queue
    assert props.headers["trace"] == "t-1"
    assert props.delivery_mode == 2 and props.content_type == "application/json"
    assert props.expiration is None  # a dead letter does not expire with its original


def test_a_deleted_queue_is_not_found_naming_it(sub: Subscription) -> None:
    source = RabbitMqSource(sub)
    try:
        assert source.receive(1, 0.1) == []
        conn = pika.BlockingConnection(pika.URLParameters(HARNESS.url))
        conn.channel().queue_delete(str(sub.queue))
        conn.close()
        with pytest.raises(NotFoundError, match=f"{sub.queue}.*--create"):
            source.receive(1, 0.2)
        with pytest.raises(NotFoundError):
            source.lag()
    finally:
        source.close()


def test_create_declares_queue_and_dead_letter_queue(sub: Subscription) -> None:
    mine = HARNESS.fresh(create=False)
    try:
        with pytest.raises(NotFoundError, match="--create"):
            RabbitMqSource(mine)
        RabbitMqSource(dataclasses.replace(mine, create=True)).close()
        assert _ready(str(mine.queue)) == 0 and _ready(str(mine.dead_letter)) == 0
    finally:
        HARNESS.cleanup(mine)


def test_bad_urls_and_credentials_are_input_errors_without_the_password() -> None:
    for url in ("amqp://guest:s3cret@127.0.0.1:notaport/%2f", "http://guest:s3cret@x/",
                "amqp://guest:s3cret@/"):
        with pytest.raises(InputError) as err:
            RabbitMqSource(Subscription(url=url, queue="q"))
        assert "s3cret" not in str(err.value)
    with pytest.raises(InputError, match="--queue"):
        RabbitMqSource(Subscription(url=HARNESS.url))
    if HARNESS.down() is None:
        with pytest.raises(InputError, match="refused the login") as err:
            RabbitMqSource(Subscription(url="amqp://guest:s3cret@127.0.0.1:5672/%2f",
                                        queue="q"))
        assert "s3cret" not in str(err.value)
        with pytest.raises(InputError, match="virtual host"):
            RabbitMqSource(Subscription(url="amqp://guest:guest@127.0.0.1:5672/nope",
                                        queue="q"))


def test_a_listener_that_never_speaks_times_out_on_connect() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port}"):
            RabbitMqSource(Subscription(url=HARNESS.url_at(port), queue="q",
                                        connect_timeout=1.5))
        assert time.monotonic() - started < 10


def test_a_dropped_connection_is_unavailable_then_reconnects(sub: Subscription) -> None:
    proxy = _Proxy()
    HARNESS.publish(sub, _bodies(3))
    source = RabbitMqSource(dataclasses.replace(sub, url=HARNESS.url_at(proxy.port)))
    try:
        got = _drain(source, 3)
        proxy.cut()
        with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{proxy.port}"):
            for _ in range(20):
                source.receive(1, 0.2)
        with pytest.raises(BrokerUnavailableError):
            source.lag()
        source.ack(got)  # stale now: ignored (or unavailable), never a crash
        source.reconnect()
        back = _drain(source, 3)
        assert sorted(d.body for d in back) == sorted(_bodies(3))
        source.ack(back)
    finally:
        source.close()
        proxy.close()
    assert HARNESS.unsettled(sub) == 0


def test_a_hung_broker_is_noticed_by_the_heartbeat(sub: Subscription) -> None:
    proxy = _Proxy()
    source = RabbitMqSource(dataclasses.replace(
        sub, url=HARNESS.url_at(proxy.port) + "?heartbeat=2"))
    try:
        proxy.frozen.set()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            while time.monotonic() - started < 60:
                source.receive(1, 1.0)
                source.lag()
        assert time.monotonic() - started < 30  # heartbeat 2 s: noticed in ~14 s here
    finally:
        source.close()
        proxy.close()


def test_heartbeats_are_answered_while_the_caller_is_busy(sub: Subscription) -> None:
    HARNESS.publish(sub, _bodies(1))
    # Heartbeat 2 s: without answers the broker drops a connection after two missed ones.
    source = RabbitMqSource(dataclasses.replace(sub, url=sub.url + "?heartbeat=2"))
    try:
        got = _drain(source, 1)
        time.sleep(9)  # a long batch: no calls into the source
        source.ack(got)
        assert source.receive(1, 0.5) == []
    finally:
        source.close()
    assert HARNESS.unsettled(sub) == 0


_CONSUMER = """
import sys, time
from semsearch.adapters.brokers.rabbitmq import RabbitMqSource
from semsearch.core.events import Subscription
source = RabbitMqSource(Subscription(url=sys.argv[1], queue=sys.argv[2]))
got = []
while len(got) < 3:
    got += source.receive(3 - len(got), 0.5)
print("held", flush=True)
time.sleep(60)
"""


def test_a_killed_consumer_gives_its_messages_back(sub: Subscription) -> None:
    HARNESS.publish(sub, _bodies(3))
    proc = subprocess.Popen([sys.executable, "-c", _CONSUMER, sub.url, str(sub.queue)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        assert _ready(str(sub.queue)) == 0
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    source = RabbitMqSource(sub)
    try:
        back = _drain(source, 3, timeout=sub.redeliver_after + 5)
        assert sorted(d.body for d in back) == sorted(_bodies(3))
        assert all(d.redelivered for d in back)
        source.ack(back)
    finally:
        source.close()

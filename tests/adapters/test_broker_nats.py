"""What the NATS JetStream adapter promises beyond the shared contract: a cut connection is
raised (not waited out silently), held messages are handed back at once on reconnect and
close, ``receive`` does not sit out its timeout when fewer messages are there, a hung
server and bad input fail fast and clearly, and a signal handler still runs while a call
waits on the adapter's event loop."""

from __future__ import annotations

import dataclasses
import signal
import socket
import threading
import time

import pytest

from semsearch.core.events import Subscription
from semsearch.errors import BrokerUnavailableError, InputError
from tests.brokers import BrokerHarness, require
from tests.brokers import delete_bodies as _bodies
from tests.brokers import drain as _drain
from tests.brokers import free_port as _free_port
from tests.brokers.nats import HARNESS, PORT
from tests.brokers.proxy import OutageProxy

pytest.importorskip("nats")
from semsearch.adapters.brokers.nats import NatsSource

pytestmark = pytest.mark.brokers


@pytest.fixture
def broker() -> BrokerHarness:
    """This module's broker, for the shared ``sub`` fixture (tests/brokers)."""
    return require(HARNESS)


def test_receive_returns_what_is_there_without_sitting_out_the_timeout(
        sub: Subscription) -> None:
    source = NatsSource(sub)
    try:
        HARNESS.publish(sub, _bodies(3))
        started = time.monotonic()
        got = source.receive(10, 5.0)
        assert time.monotonic() - started < 2.5
        assert [d.body for d in got] == _bodies(3)
        assert not any(d.redelivered for d in got)
        source.ack(got)
    finally:
        source.close()


def test_create_declares_the_stream_and_the_dead_letter_stream(sub: Subscription) -> None:
    HARNESS.cleanup(sub)
    created = dataclasses.replace(sub, create=True, subject=None)
    source = NatsSource(created)
    try:
        assert created.stream is not None
        HARNESS.publish(dataclasses.replace(created, subject=f"{created.stream}.docs"),
                        [b"poison"])
        got = _drain(source, 1)
        reason = "line one\nline two: caf\u00e9 \u2014 \U0001f600"
        source.dead_letter(got[0], reason)
        source.dead_letter(got[0], reason)  # a retry after a crash: stored once
        source.ack(got)
    finally:
        source.close()
    assert HARNESS.dead_letters(sub) == [(b"poison", " ".join(reason.split()))]


def test_held_messages_come_back_at_once_on_reconnect_and_close(sub: Subscription) -> None:
    slow = dataclasses.replace(sub, redeliver_after=60.0)  # only a hand-back is fast
    HARNESS.publish(sub, _bodies(4))
    source = NatsSource(slow)
    try:
        first = _drain(source, 4)
        assert len(first) == 4
        source.ack(first[:1])
        source.reconnect()
        back = _drain(source, 3, timeout=5.0)
        assert sorted(d.body for d in back) == sorted(_bodies(4)[1:])
        assert all(d.redelivered for d in back)
    finally:
        source.close()  # without acking `back`
    other = NatsSource(slow)
    try:
        again = _drain(other, 3, timeout=5.0)
        assert sorted(d.body for d in again) == sorted(_bodies(4)[1:])
        other.ack(first + back)  # stale deliveries, another connection's: harmless
        other.ack(again)
    finally:
        other.close()
    assert HARNESS.unsettled(sub) == 0


def test_a_cut_connection_is_raised_and_reconnect_recovers(sub: Subscription) -> None:
    proxy = OutageProxy(PORT)
    through = dataclasses.replace(sub, url=HARNESS.url_at(proxy.port), redeliver_after=60.0)
    source = NatsSource(through)
    try:
        HARNESS.publish(sub, _bodies(2))
        held = _drain(source, 2)
        assert len(held) == 2
        cut = threading.Thread(target=proxy.outage, args=(2.0,))
        cut.start()
        time.sleep(0.3)
        with pytest.raises(BrokerUnavailableError) as err:
            for _ in range(5):
                source.receive(5, 0.5)
        assert f"127.0.0.1:{proxy.port}" in str(err.value)
        with pytest.raises(BrokerUnavailableError):
            source.reconnect()  # refused during the outage
        cut.join()
        source.reconnect()
        back = _drain(source, 2, timeout=5.0)
        assert sorted(d.body for d in back) == sorted(_bodies(2))
        source.ack(held + back)
    finally:
        source.close()
        proxy.close()
    assert HARNESS.unsettled(sub) == 0


def test_a_server_that_never_answers_fails_within_the_connect_timeout() -> None:
    with socket.socket() as listener:  # accepts, never says INFO
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        sub = Subscription(url=f"nats://user:s3cret@127.0.0.1:{port}", stream="S",
                           connect_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError) as err:
            NatsSource(sub)
        assert time.monotonic() - started < 5
    assert f"127.0.0.1:{port}" in str(err.value) and "s3cret" not in str(err.value)


def test_the_name_never_shows_credentials() -> None:
    port = _free_port()
    with pytest.raises(BrokerUnavailableError) as err:
        NatsSource(Subscription(url=f"nats://tok3n@127.0.0.1:{port}", stream="S",
                                connect_timeout=1.0))
    assert "tok3n" not in str(err.value)


@pytest.mark.parametrize(("changes", "needle"), [
    ({"stream": None}, "--stream"),
    ({"stream": "a.b"}, "--stream"),
    ({"group": "g with space"}, "--group"),
    ({"subject": "a..b"}, "--subject"),
    ({"dead_letter": "x>y"}, "--dead-letter"),
    ({"url": "nats://127.0.0.1:99999"}, "port"),
    ({"url": "nats://a:4222,nats://b:4222"}, "one NATS server"),
    ({"url": "http://127.0.0.1:4222"}, "nats://host:port"),
])
def test_bad_input_is_an_input_error(changes: dict[str, object], needle: str) -> None:
    base = Subscription(url="nats://127.0.0.1:1", stream="S", subject="s.>")
    with pytest.raises(InputError) as err:
        NatsSource(dataclasses.replace(base, **changes))  # type: ignore[arg-type]
    assert needle in str(err.value)


def test_an_existing_consumer_with_another_filter_is_refused(sub: Subscription) -> None:
    NatsSource(sub).close()  # creates the durable consumer with sub's filter
    assert sub.stream is not None
    other = dataclasses.replace(sub, subject=sub.subject.rsplit(".", 1)[0] + ".other"
                                if sub.subject else None)
    with pytest.raises(InputError) as err:
        NatsSource(other)
    assert "--group" in str(err.value)


def test_a_signal_handler_runs_while_receive_waits(sub: Subscription) -> None:
    source = NatsSource(sub)
    fired: list[float] = []
    previous = signal.signal(signal.SIGALRM, lambda *_: fired.append(time.monotonic()))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        source.receive(1, 1.5)
        returned = time.monotonic()
        assert fired and fired[0] < returned - 0.5  # ran during the wait, not after it
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        source.close()


def test_close_is_quick_and_idempotent_and_later_calls_fail_clearly(
        sub: Subscription) -> None:
    source = NatsSource(sub)
    started = time.monotonic()
    source.close()
    source.close()
    assert time.monotonic() - started < 3
    with pytest.raises(BrokerUnavailableError):
        source.receive(1, 0.1)

"""The EventSource contract, against every real broker this machine runs.

What the consumer relies on: at-least-once delivery (what is not acked comes back after a
reconnect), settled messages never come back, competing consumers on one subscription never
hold the same message at once, dead letters land with their reason, ``receive`` honours its
limits, a missing queue or an unreachable broker is a clear error, and no password leaks
into the name."""

from __future__ import annotations

import time

import pytest

from semsearch.core.events import Subscription
from semsearch.errors import BrokerUnavailableError, InputError, NotFoundError
from semsearch.wiring import open_event_source
from tests.brokers import BrokerHarness, free_port
from tests.brokers import delete_bodies as _bodies
from tests.brokers import drain as _drain

pytestmark = pytest.mark.brokers


def test_receive_in_order_and_ack_settles(broker: BrokerHarness, sub: Subscription) -> None:
    broker.publish(sub, _bodies(5))
    source = open_event_source(sub)
    try:
        got = _drain(source, 5)
        assert [d.body for d in got] == _bodies(5)
        source.ack(got)
        assert source.receive(5, 0.5) == []
    finally:
        source.close()
    assert broker.unsettled(sub) == 0
    again = open_event_source(sub)
    try:
        assert again.receive(5, 1.0) == []
    finally:
        again.close()


def test_unacked_come_back_after_reconnect(broker: BrokerHarness, sub: Subscription) -> None:
    broker.publish(sub, _bodies(4))
    source = open_event_source(sub)
    try:
        first = _drain(source, 4)
        assert len(first) == 4
        source.ack(first[:1])
        source.reconnect()
        back = _drain(source, 3, timeout=30.0)
        assert sorted(d.body for d in back) == sorted(_bodies(4)[1:])
        source.ack(back)
    finally:
        source.close()
    assert broker.unsettled(sub) == 0


def test_unacked_come_back_to_another_consumer(broker: BrokerHarness,
                                               sub: Subscription) -> None:
    broker.publish(sub, _bodies(3))
    a = open_event_source(sub)
    got = _drain(a, 3)
    assert len(got) == 3
    a.close()  # gone without acking (a crashed consumer's connection closes too)
    b = open_event_source(sub)
    try:
        back = _drain(b, 3, timeout=30.0)
        assert sorted(d.body for d in back) == sorted(_bodies(3))
        b.ack(back)
    finally:
        b.close()


def test_receive_limits(broker: BrokerHarness, sub: Subscription) -> None:
    source = open_event_source(sub)
    try:
        started = time.monotonic()
        assert source.receive(10, 0.5) == []
        assert time.monotonic() - started < 3.0
        broker.publish(sub, _bodies(6))
        time.sleep(0.3)
        got = _drain(source, 3)
        assert 1 <= len(got) <= 3
        more = _drain(source, 6 - len(got))
        assert len(got) + len(more) == 6
        source.ack(got + more)
    finally:
        source.close()


def test_competing_consumers_share_without_overlap(broker: BrokerHarness,
                                                   sub: Subscription) -> None:
    a, b = open_event_source(sub), open_event_source(sub)
    try:
        broker.publish(sub, _bodies(20))
        seen: list[bytes] = []
        held_a = _drain(a, 8)
        held_b = _drain(b, 8)
        assert held_a and held_b
        assert not {d.body for d in held_a} & {d.body for d in held_b}
        seen += [d.body for d in held_a + held_b]
        a.ack(held_a)
        b.ack(held_b)
        rest = _drain(a, 20 - len(seen))
        a.ack(rest)
        seen += [d.body for d in rest]
        assert sorted(seen) == sorted(_bodies(20))
    finally:
        a.close()
        b.close()


def test_dead_letter_keeps_body_and_reason(broker: BrokerHarness, sub: Subscription) -> None:
    broker.publish(sub, [b"not json", b'{"op":"upsert"}'])
    source = open_event_source(sub)
    try:
        got = _drain(source, 2)
        for d, why in zip(got, ["the message is not JSON", "no id"], strict=True):
            source.dead_letter(d, why)
        source.ack(got)
        source.reconnect()
        assert source.receive(5, 1.0) == []
    finally:
        source.close()
    assert sorted(broker.dead_letters(sub)) == sorted(
        [(b"not json", "the message is not JSON"), (b'{"op":"upsert"}', "no id")])


def test_lag_counts_waiting_messages(broker: BrokerHarness, sub: Subscription) -> None:
    source = open_event_source(sub)
    try:
        broker.publish(sub, _bodies(5))
        deadline = time.monotonic() + 5
        while source.lag() != 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert source.lag() == 5
        got = _drain(source, 5)
        source.ack(got)
        deadline = time.monotonic() + 5
        while source.lag() != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert source.lag() == 0
    finally:
        source.close()


def test_missing_subscription_is_a_clear_error(broker: BrokerHarness) -> None:
    missing = broker.fresh(create=False)
    try:
        with pytest.raises((InputError, NotFoundError)) as err:
            open_event_source(missing).close()
        named = missing.queue or missing.stream or ""
        assert named in str(err.value)
        assert "--create" in str(err.value)
    finally:
        broker.cleanup(missing)


def test_unreachable_broker_is_a_clear_error(broker: BrokerHarness) -> None:
    port = free_port()  # a loopback port nothing listens on
    url = broker.url_at(port)
    sub = Subscription(url=url, queue="q", stream="s", subject="s.>", connect_timeout=3.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as err:
        open_event_source(sub).close()
    assert time.monotonic() - started < 15
    assert f"127.0.0.1:{port}" in str(err.value)


def test_name_hides_the_password(broker: BrokerHarness, sub: Subscription) -> None:
    source = open_event_source(sub)
    try:
        assert "guest:guest" not in source.name
        assert (sub.queue or sub.stream or "") in source.name
    finally:
        source.close()

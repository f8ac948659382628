"""Redis Streams specifics beyond the EventSource contract: ``--create`` and the default
dead-letter stream, entries without an ``event`` field, a kill -9'd consumer's entries
claimed by the next one, a deleted group, the lag when Redis cannot count it, consumer
names tidied on close, and a server that goes away or hangs (private redis-server
processes and a socket that never answers)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from semsearch.adapters.brokers.redis_streams import RedisStreamSource
from semsearch.core.events import Subscription
from semsearch.errors import BrokerUnavailableError, InputError, NotFoundError
from tests.brokers import BrokerHarness, require
from tests.brokers import drain as _drain
from tests.brokers import free_port as _free_port
from tests.brokers.redis import HARNESS

pytestmark = pytest.mark.brokers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker() -> BrokerHarness:
    """This module's broker, for the shared ``sub`` fixture (tests/brokers)."""
    return require(HARNESS)


def _client() -> redis.Redis:
    return redis.Redis.from_url(HARNESS.url, socket_timeout=5)


def test_create_declares_stream_and_group_reading_from_the_start(sub: Subscription) -> None:
    fresh = dataclasses.replace(sub, stream=f"{sub.stream}-new", group="created",
                                create=True)
    assert fresh.stream is not None
    with _client() as client:
        try:
            client.xadd(fresh.stream, {"event": b"before"})  # the stream, not the group
            source = RedisStreamSource(fresh)
            try:
                got = _drain(source, 1)
                assert [d.body for d in got] == [b"before"]
                assert not got[0].redelivered
                source.ack(got)
            finally:
                source.close()
            again = RedisStreamSource(fresh)  # the group exists now: BUSYGROUP is fine
            again.close()
        finally:
            client.delete(fresh.stream)


def test_missing_group_on_an_existing_stream_names_it(sub: Subscription) -> None:
    other = dataclasses.replace(sub, group="nobody-made-this")
    with pytest.raises(InputError, match=r"nobody-made-this.*--create"):
        RedisStreamSource(other)


def test_default_dead_letter_stream_and_its_fields(sub: Subscription) -> None:
    plain = dataclasses.replace(sub, dead_letter=None)
    HARNESS.publish(plain, [b"not json"])
    source = RedisStreamSource(plain)
    try:
        (d,) = _drain(source, 1)
        source.dead_letter(d, "the message is not JSON")
        source.ack([d])
    finally:
        source.close()
    with _client() as client:
        ((_, fields),) = client.xrange(f"{sub.stream}:dead")
    assert fields == {b"event": b"not json", b"reason": b"the message is not JSON",
                      b"id": d.token, b"stream": str(sub.stream).encode()}


def test_an_entry_without_event_field_is_delivered_as_its_fields(sub: Subscription) -> None:
    assert sub.stream is not None
    with _client() as client:
        client.xadd(sub.stream, {"op": "delete", "id": "p-1", "version": "3"})
    source = RedisStreamSource(sub)
    try:
        (d,) = _drain(source, 1)
        assert json.loads(d.body) == {"op": "delete", "id": "p-1", "version": "3"}
        source.ack([d])
    finally:
        source.close()


_VICTIM = """
import sys, time
from semsearch.adapters.brokers.redis_streams import RedisStreamSource
from semsearch.core.events import Subscription
url, stream, group = sys.argv[1:4]
source = RedisStreamSource(Subscription(url=url, stream=stream, group=group,
                                        redeliver_after=3.0))
got = []
while len(got) < 3:
    got += source.receive(3 - len(got), 0.5)
print("held", len(got), flush=True)
time.sleep(120)
"""


def test_a_killed_consumers_entries_are_claimed_by_the_next(sub: Subscription) -> None:
    assert sub.stream is not None
    HARNESS.publish(sub, [b"a", b"b", b"c"])
    victim = subprocess.Popen([sys.executable, "-c", _VICTIM, sub.url, sub.stream, sub.group],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "held 3"
    finally:
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
    killed = time.monotonic()
    heir = RedisStreamSource(sub)
    try:
        back = _drain(heir, 3, timeout=20.0)
        took = time.monotonic() - killed
        assert sorted(d.body for d in back) == [b"a", b"b", b"c"]
        assert all(d.redelivered for d in back)
        assert took < sub.redeliver_after + 5  # noisy machine: generous, but bounded
        heir.ack(back)
    finally:
        heir.close()
    assert HARNESS.unsettled(sub) == 0


def test_late_acks_after_reconnect_do_not_fail(sub: Subscription) -> None:
    HARNESS.publish(sub, [b"x", b"y"])
    source = RedisStreamSource(sub)
    try:
        old = _drain(source, 2)
        source.reconnect()
        back = _drain(source, 2)
        assert sorted(d.body for d in back) == [b"x", b"y"]
        assert all(d.redelivered for d in back)
        source.ack(old)  # stale tokens settle the same entries
        source.ack(back)  # already settled: nothing happens
    finally:
        source.close()
    assert HARNESS.unsettled(sub) == 0


def test_a_deleted_group_is_not_found(sub: Subscription) -> None:
    assert sub.stream is not None
    source = RedisStreamSource(sub)
    try:
        with _client() as client:
            client.xgroup_destroy(sub.stream, sub.group)
        with pytest.raises(NotFoundError, match="--create"):
            source.receive(1, 0.1)
        with pytest.raises(NotFoundError):
            source.lag()
    finally:
        source.close()


def test_lag_is_counted_when_redis_cannot_tell(sub: Subscription) -> None:
    assert sub.stream is not None
    HARNESS.publish(sub, [b"1", b"2", b"3", b"4"])
    with _client() as client:
        first = client.xrange(sub.stream, count=2)
        client.xdel(sub.stream, first[1][0])  # a hole in the undelivered range
        (group,) = client.xinfo_groups(sub.stream)
    source = RedisStreamSource(sub)
    try:
        if group["lag"] is not None:
            pytest.skip("this Redis still counts the lag after a deletion")
        assert source.lag() == 3
    finally:
        source.close()


def test_close_forgets_an_idle_consumer_and_keeps_a_busy_one(sub: Subscription) -> None:
    assert sub.stream is not None
    HARNESS.publish(sub, [b"kept"])
    idle = RedisStreamSource(dataclasses.replace(sub, consumer="idle-one"))
    idle.close()
    busy = RedisStreamSource(dataclasses.replace(sub, consumer="busy-one"))
    assert len(_drain(busy, 1)) == 1
    busy.close()
    with _client() as client:
        names = {c["name"] for c in client.xinfo_consumers(sub.stream, sub.group)}
    assert names == {b"busy-one"}


def test_name_and_errors_never_show_the_password() -> None:
    port = _free_port()
    url = f"redis://:s3cret@127.0.0.1:{port}/13"
    with pytest.raises(BrokerUnavailableError) as err:
        RedisStreamSource(Subscription(url=url, stream="s", connect_timeout=2.0))
    assert "s3cret" not in str(err.value) and f"127.0.0.1:{port}" in str(err.value)
    with pytest.raises(InputError) as bad:
        RedisStreamSource(Subscription(url="redis://:s3cret@127.0.0.1:notaport/0",
                                       stream="s"))
    assert "s3cret" not in str(bad.value)


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError, match=f"127.0.0.1:{port}"):
            RedisStreamSource(Subscription(url=f"redis://127.0.0.1:{port}/0", stream="s",
                                           connect_timeout=1.0))
        assert time.monotonic() - started < 5


class _Server:
    """A private redis-server without persistence, to stop and start again."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary on PATH")
        self.binary, self.workdir, self.port = binary, workdir, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        with redis.Redis(port=self.port, socket_connect_timeout=0.5) as probe:
            while True:
                try:
                    probe.ping()
                    return
                except redis.ConnectionError:
                    assert time.monotonic() < deadline, "redis-server did not start"
                    time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def test_a_server_going_away_is_unavailable_then_reconnect_recovers(tmp_path: Path) -> None:
    server = _Server(tmp_path)
    server.start()
    where = f"127.0.0.1:{server.port}"
    sub = Subscription(url=f"redis://{where}/0", stream="events", create=True,
                       connect_timeout=2.0)
    try:
        source = RedisStreamSource(sub)
        with redis.Redis(port=server.port) as client:
            client.xadd("events", {"event": b"e1"})
        held = _drain(source, 1)
        server.stop()
        for call in (lambda: source.receive(1, 0.2), lambda: source.ack(held), source.lag,
                     lambda: source.dead_letter(held[0], "why")):
            with pytest.raises(BrokerUnavailableError, match=where):
                call()
        with pytest.raises(BrokerUnavailableError, match=where):
            source.reconnect()
        server.start()  # empty: this server keeps nothing on disk
        source.reconnect()  # --create declares the stream and group again
        assert source.receive(1, 0.2) == []
        assert source.lag() == 0
        source.ack(held)  # a token of the lost stream: harmless
        source.close()
        source.close()
    finally:
        server.stop()


def test_a_key_that_is_not_a_stream_is_bad_input(sub: Subscription) -> None:
    assert sub.stream is not None
    with _client() as client:
        client.set(f"{sub.stream}-plain", "x")
        try:
            for create in (False, True):
                with pytest.raises(InputError, match="other than a stream"):
                    RedisStreamSource(dataclasses.replace(
                        sub, stream=f"{sub.stream}-plain", create=create))
        finally:
            client.delete(f"{sub.stream}-plain")

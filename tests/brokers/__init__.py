"""Test harnesses for the real message brokers this machine runs (RabbitMQ, NATS JetStream,
Redis Streams), one module each, all with the same shape (``BrokerHarness``), so the
EventSource contract suite and the consumer's end-to-end tests run once per broker.

Each harness talks to its broker with the broker's own client (not through semsearch), so
what a test publishes and what it reads back from the dead-letter destination does not
depend on the adapter under test."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Iterator, Sequence
from typing import Protocol

import pytest

from semsearch.core.events import Subscription
from semsearch.ports import Delivery, EventSource
from tests.serving import free_port as free_port  # one helper for every suite

NAMES = ("rabbitmq", "nats", "redis")


class BrokerHarness(Protocol):
    name: str  # one of NAMES
    url: str  # the broker's URL on loopback, e.g. amqp://guest:guest@127.0.0.1:5672/%2f

    def url_at(self, port: int) -> str:
        """The broker's URL with another loopback port (for the unreachable-broker test)."""
        ...

    def down(self) -> str | None:
        """Why the broker cannot be reached now, or None when it answers."""
        ...

    def fresh(self, create: bool = True) -> Subscription:
        """A subscription of its own (unique queue / stream / subject / group names),
        created on the broker when ``create`` (else left missing, for the missing-queue
        error), with a dead-letter destination of its own too, and ``redeliver_after``
        short (3 s) so tests of a vanished consumer do not wait 30 s."""
        ...

    def cli_args(self, sub: Subscription) -> list[str]:
        """The `semsearch consume` flags for ``sub`` (``--from`` included)."""
        ...

    def publish(self, sub: Subscription, bodies: Sequence[bytes]) -> None:
        """Publish each body durably, in order, where ``sub`` reads."""
        ...

    def dead_letters(self, sub: Subscription) -> list[tuple[bytes, str]]:
        """Every (body, reason) on ``sub``'s dead-letter destination so far."""
        ...

    def unsettled(self, sub: Subscription) -> int:
        """Messages of ``sub`` not yet acknowledged (waiting or delivered and unacked)."""
        ...

    def cleanup(self, sub: Subscription) -> None:
        """Delete what ``fresh`` created."""
        ...


def harness(name: str) -> BrokerHarness:
    module = importlib.import_module(f"tests.brokers.{name}")
    h: BrokerHarness = module.HARNESS
    return h


def require(h: BrokerHarness) -> BrokerHarness:
    """``h`` if its broker answers; else skip, or fail in CI (which starts every broker)."""
    why = h.down()
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{h.name} is down in CI: {why}")
        pytest.skip(f"{h.name} is down: {why}")
    return h


def drain(source: EventSource, want: int, timeout: float = 10.0) -> list[Delivery]:
    """Receive until ``want`` deliveries came or ``timeout`` passed."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += source.receive(want - len(got), 0.5)
    return got


def delete_bodies(n: int, tag: str = "m") -> list[bytes]:
    """``n`` distinct, valid event bodies (deletes: nothing to embed)."""
    return [f'{{"op":"delete","id":"{tag}-{i}","version":{i}}}'.encode() for i in range(n)]




@pytest.fixture(params=NAMES)
def broker(request: pytest.FixtureRequest) -> BrokerHarness:
    """Each broker in turn (import it, with ``sub``, into a test module)."""
    return require(harness(request.param))


@pytest.fixture
def sub(broker: BrokerHarness) -> Iterator[Subscription]:
    """A fresh subscription on ``broker``, deleted afterwards."""
    s = broker.fresh()
    yield s
    broker.cleanup(s)

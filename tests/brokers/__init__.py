"""Test harnesses for the real message brokers this machine runs (RabbitMQ, NATS JetStream,
Redis Streams), one module each, all with the same shape (``BrokerHarness``), so the
EventSource contract suite and the consumer's end-to-end tests run once per broker.

Each harness talks to its broker with the broker's own client (not through semsearch), so
what a test publishes and what it reads back from the dead-letter destination does not
depend on the adapter under test."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Protocol

from semsearch.core.events import Subscription

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

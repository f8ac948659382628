"""``semsearch consume``: change events from RabbitMQ, NATS JetStream or Redis Streams into a
collection, until SIGTERM (made for a Deployment: progress lines and a summary on stderr,
Prometheus metrics on ``--metrics-port``; exit 0 after a clean stop, 1 when the broker is
unreachable at start or the run fails, 2 for bad arguments)."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import click

from semsearch.cli.common import _echo_json, _engine

PROGRESS_SECONDS = 10.0


class _Metrics:
    """The consumer's Prometheus metrics, in a registry of their own, served on loopback
    unless told otherwise."""

    def __init__(self, collection: str, source: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        labels = {"collection": collection}
        self._events = Counter("semsearch_consume_events", "change events, by outcome "
                               "(upserted, deleted, unchanged, stale, dead_letter)",
                               ["collection", "outcome"], registry=self.registry)
        self._dead = Counter("semsearch_consume_dead_letters", "messages sent to the "
                             "dead-letter destination", ["collection"], registry=self.registry)
        self._batches = Histogram("semsearch_consume_batch_seconds", "one micro-batch: "
                                  "parse, embed, commit, dead-letter, acknowledge",
                                  ["collection"], registry=self.registry,
                                  buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
        self._lag = Gauge("semsearch_consume_lag", "messages waiting on the broker for this "
                          "subscription (where the broker tells)", ["collection"],
                          registry=self.registry)
        self._reconnects = Counter("semsearch_consume_reconnects", "broker or store outages "
                                   "waited out", ["collection"], registry=self.registry)
        info = Gauge("semsearch_consume_info", "what this consumer reads", ["collection",
                     "source"], registry=self.registry)
        info.labels(collection=collection, source=source).set(1)
        for outcome in ("upserted", "deleted", "unchanged", "stale", "dead_letter"):
            self._events.labels(outcome=outcome, **labels)
        self._dead.labels(**labels)
        self._reconnects.labels(**labels)
        self._labels = labels
        self.printed = time.monotonic()
        self.total: dict[str, int] = {}

    def serve(self, host: str, port: int) -> None:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.registry)

    def batch(self, outcomes: Mapping[str, int], seconds: float, lag: int | None) -> None:
        for outcome, n in outcomes.items():
            if n:
                self._events.labels(outcome=outcome, **self._labels).inc(n)
                self.total[outcome] = self.total.get(outcome, 0) + n
        if outcomes.get("dead_letter"):
            self._dead.labels(**self._labels).inc(outcomes["dead_letter"])
        self._batches.labels(**self._labels).observe(seconds)
        if lag is not None:
            self._lag.labels(**self._labels).set(lag)
        if time.monotonic() - self.printed >= PROGRESS_SECONDS:
            self.printed = time.monotonic()
            parts = ", ".join(f"{k} {v}" for k, v in sorted(self.total.items()))
            click.echo(f"consume: {sum(self.total.values())} events ({parts}); lag "
                       f"{'?' if lag is None else lag}", err=True)

    def reconnecting(self, error: str, delay: float) -> None:
        self._reconnects.labels(**self._labels).inc()
        click.echo(f"consume: {error}; reconnecting in {delay:.1f} s", err=True)


@click.command()
@click.option("--from", "url", required=False, metavar="URL",
              help="the broker: amqp://user:pass@host:5672/vhost (RabbitMQ), "
              "nats://host:4222 (NATS JetStream), redis://host:6379/0 (Redis Streams)")
@click.option("--collection", "-c", help="collection to write into (created if new)")
@click.option("--queue", help="RabbitMQ: the queue to consume")
@click.option("--stream", help="NATS: the JetStream stream; Redis: the stream's key")
@click.option("--subject", help="NATS: the subject filter, e.g. 'docs.>'")
@click.option("--group", default="semsearch", show_default=True,
              help="Redis: the consumer group; NATS: the durable consumer's name")
@click.option("--consumer", "consumer_name",
              help="this process's name in the group (default: host-pid-random)")
@click.option("--dead-letter", help="where poison messages go (default: <queue>.dead, "
              "<stream>:dead on Redis, stream <STREAM>_DEAD on NATS)")
@click.option("--create", is_flag=True,
              help="declare the queue / stream / group if it does not exist")
@click.option("--batch-size", type=click.IntRange(1, 10_000),
              help="most events per micro-batch [SEMSEARCH_CONSUME_BATCH_SIZE: 256]")
@click.option("--max-wait-ms", type=click.IntRange(0, 60_000),
              help="longest a micro-batch waits to fill after its first event "
              "[SEMSEARCH_CONSUME_MAX_WAIT_MS: 500]")
@click.option("--redeliver-after", type=click.FloatRange(1, 3600), default=30.0,
              show_default=True, help="seconds before another consumer may take a message "
              "this one received and did not acknowledge (NATS ack wait; Redis claim)")
@click.option("--idle-exit", type=click.FloatRange(0.1, None),
              help="stop after this many seconds without events (a catch-up job)")
@click.option("--max-events", type=click.IntRange(1, None),
              help="stop after about this many events (whole batches)")
@click.option("--save-every", type=click.FloatRange(1, None), default=60.0, show_default=True,
              help="seconds between saves of the embedded backend's index files")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="serve Prometheus metrics on this port (path /metrics)")
@click.option("--metrics-host", default="127.0.0.1", show_default=True,
              help="address the metrics port listens on (0.0.0.0 in a container)")
@click.option("--json", "as_json", is_flag=True, help="print the summary as one JSON object")
@click.option("--schema", is_flag=True, help="print the change-event JSON Schema and exit")
def consume(url: str | None, collection: str | None, queue: str | None, stream: str | None,
            subject: str | None, group: str, consumer_name: str | None,
            dead_letter: str | None, create: bool, batch_size: int | None,
            max_wait_ms: int | None, redeliver_after: float, idle_exit: float | None,
            max_events: int | None, save_every: float, metrics_port: int | None,
            metrics_host: str, as_json: bool, schema: bool) -> None:
    """Apply change events from a message broker to a collection, until SIGTERM.

    \b
    Each message is one JSON object (semsearch consume --schema prints the schema):
      {"op": "upsert", "id": "p-1", "text": "...", "title": "...", "metadata": {...},
       "version": 17}
      {"op": "delete", "id": "p-1", "version": 18}
    version: an integer or an RFC 3339 timestamp. An event whose version is not newer than
    the last one applied for its id changes nothing (redeliveries, late stale events).

    Events are acknowledged only after their batch is committed; invalid messages go to the
    dead-letter destination with the reason. Several consumers on one queue, stream or
    group share the work. SIGTERM finishes and acknowledges the batch in hand."""
    from semsearch.core.events import Subscription
    from semsearch.core.events import schema as event_schema
    from semsearch.errors import BrokerUnavailableError, InputError
    from semsearch.services.consume import ConsumeOptions, standby
    from semsearch.services.consume import consume as run_consume
    from semsearch.services.ingest import validate_name
    from semsearch.wiring import open_event_source

    if schema:
        click.echo(json.dumps(event_schema(), indent=2, ensure_ascii=False))
        return
    if not url or not collection:
        raise InputError("give --from URL and --collection NAME (see semsearch consume -h)")
    if "@" not in collection:
        validate_name(collection)  # before the broker is touched
    sub = Subscription(url=url, queue=queue, stream=stream, subject=subject, group=group,
                       consumer=consumer_name, dead_letter=dead_letter, create=create,
                       redeliver_after=redeliver_after)
    stop = threading.Event()
    with _engine() as engine:
        s = engine.settings
        options = ConsumeOptions(
            batch_size=batch_size or s.consume_batch_size,
            max_wait=(s.consume_max_wait_ms if max_wait_ms is None else max_wait_ms) / 1000,
            idle_exit=idle_exit, max_events=max_events, save_every=save_every)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        with ExitStack() as held:
            if not standby(engine, collection, stop, held,
                           lambda why: click.echo(f"consume: {why}", err=True)):
                click.echo("consume: stopped while standing by", err=True)
                return
            try:
                source = open_event_source(sub)
            except BrokerUnavailableError as exc:
                click.echo(f"error: {exc}", err=True)
                sys.exit(1)
            metrics = _Metrics(collection, source.name)
            try:
                if metrics_port is not None:
                    try:
                        metrics.serve(metrics_host, metrics_port)
                    except OSError as exc:
                        raise InputError(f"--metrics-port {metrics_port}: "
                                         f"{exc.strerror or exc}") from None
                click.echo(f"consume: {source.name} -> {collection!r} (batches of "
                           f"{options.batch_size}, {options.max_wait * 1000:.0f} ms wait)",
                           err=True)
                report = run_consume(engine, source, collection, options, stop, metrics)
            finally:
                source.close()
    _summary(report.to_dict(), as_json)


def _summary(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _echo_json(r)
        return
    click.echo(f"consumed {r['events']} events into {r['collection']!r} in {r['seconds']:.1f} s "
               f"({r['events_per_second']}/s): {r['upserted']} upserted, {r['deleted']} "
               f"deleted, {r['unchanged']} unchanged, {r['stale']} stale, "
               f"{r['dead_lettered']} dead-lettered; {r['batches']} batches, "
               f"{r['chunks_written']} chunks written, {r['embedded']} texts embedded in "
               f"{r['model_calls']} model calls, {r['tokens']} tokens, {r['cache_hits']} "
               f"cache hits; {r['reconnects']} reconnects", err=True)
    for label, reason in r["dead_letter_reasons"].items():
        click.echo(f"warning: dead-lettered {label!r}: {reason}", err=True)

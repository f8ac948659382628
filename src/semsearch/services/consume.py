"""Change events from a message broker into a collection: the ``consume`` use case.

Brokers deliver at least once, so the effect is made exactly-once here, not by the broker:

    receive a micro-batch (up to a size, or a wait limit after its first event)
    -> parse each message (poison ones: their reason, for the dead-letter destination)
    -> newest event per id in the batch (an update then a delete ends deleted)
    -> drop events not newer than the version already applied for their id (redeliveries,
       late stale events)
    -> the one write path (hash diff: unchanged text never reaches the model; one store
       transaction that also claims the new versions, refused whole if another consumer
       got there first, then re-read and retried)
    -> dead-letter the poison messages -> acknowledge the whole batch

A crash anywhere before the acknowledgement means the batch comes back, and replaying it
changes nothing that was committed. Broker outages are waited out with backoff; a SIGTERM
(``stop``) finishes and acknowledges the batch in hand."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from semsearch.core.backoff import backoff_delay
from semsearch.core.events import ChangeEvent, latest, parse_event
from semsearch.core.unicode import shown
from semsearch.errors import (
    BrokerUnavailableError,
    BusyError,
    InputError,
    NotFoundError,
    SemsearchError,
    StaleWriteError,
)
from semsearch.ports import Delivery, EventSource, LedgerUpdate
from semsearch.runtime.engine import Engine
from semsearch.runtime.writer import MAX_REASONS, Batch, BatchWriter, Failpoints, WriteCounts

RUN_KIND = "consume"
OUTCOMES = ("upserted", "deleted", "unchanged", "stale", "dead_letter")
POLL_SECONDS = 1.0  # longest a receive blocks, so a stop request is seen within a second
CLAIM_ATTEMPTS = 8  # store transactions a batch may lose to competing consumers in a row

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConsumeOptions:
    batch_size: int = 256
    max_wait: float = 0.5  # seconds a batch waits for more events after its first
    idle_exit: float | None = None  # stop after this long with no events (None: never)
    max_events: int | None = None  # stop after about this many events (whole batches)
    save_every: float = 60.0  # seconds between saves of a file-backed index


class ConsumeObserver(Protocol):
    """Where a long-running consumer reports as it goes (Prometheus in the CLI)."""

    def batch(self, outcomes: Mapping[str, int], seconds: float, lag: int | None) -> None: ...

    def reconnecting(self, error: str, delay: float) -> None: ...


@dataclass
class ConsumeReport:
    collection: str
    source: str
    status: str = "running"
    events: int = 0
    upserted: int = 0
    deleted: int = 0
    unchanged: int = 0
    stale: int = 0
    dead_lettered: int = 0
    batches: int = 0
    chunks_written: int = 0
    embedded: int = 0
    model_calls: int = 0
    tokens: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    conflicts: int = 0  # batches that lost a version race and were re-read and retried
    reconnects: int = 0
    lag: int | None = None
    seconds: float = 0.0
    events_per_second: float = 0.0
    dead_letter_reasons: dict[str, str] = field(default_factory=dict)  # the first MAX_REASONS
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Outcome:
    counts: dict[str, int]
    poison: list[tuple[Delivery, str]]
    writes: WriteCounts


class Consumer:
    """One consumer process's loop over one subscription into one collection."""

    def __init__(self, engine: Engine, source: EventSource, collection: str,
                 options: ConsumeOptions, stop: threading.Event | None = None,
                 observer: ConsumeObserver | None = None) -> None:
        self.engine = engine
        self.source = source
        self.collection = collection
        self.options = options
        self.stop = stop or threading.Event()
        self.observer = observer
        self.report = ConsumeReport(collection=collection, source=source.name)
        self._fail = Failpoints(engine.settings.failpoints)
        self._writer: BatchWriter | None = None
        self._saved_at = time.monotonic()
        self._lag_at = 0.0
        engine.collection(collection, create=True)  # a bad name fails before any event

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> ConsumeReport:
        started = time.perf_counter()
        idle_since = time.monotonic()
        failures = 0  # outages in a row, for the backoff
        try:
            while not self.stop.is_set():
                if self.options.max_events is not None and \
                        self.report.events >= self.options.max_events:
                    break
                try:
                    deliveries = self._collect()
                    if deliveries:
                        self._handle(deliveries)
                        idle_since = time.monotonic()
                    elif self.options.idle_exit is not None and \
                            time.monotonic() - idle_since >= self.options.idle_exit:
                        break
                    self._maybe_save()
                    failures = 0
                except (InputError, NotFoundError):
                    raise  # a deleted queue, a refused setting: waiting will not help
                except SemsearchError as exc:  # the broker or the store is down: wait
                    failures = self._recover(exc, failures)
            self.report.status = "ok"
        except BaseException as exc:
            self.report.status = "failed"
            self.report.error = str(exc) if isinstance(exc, SemsearchError) else \
                f"{type(exc).__name__}: {exc}"
            raise
        finally:
            self._save()
            r = self.report
            r.seconds = round(time.perf_counter() - started, 3)
            r.events_per_second = round(r.events / r.seconds, 1) if r.seconds else 0.0
        return self.report

    def _collect(self) -> list[Delivery]:
        """A micro-batch: wait (in short polls) for a first event, then up to ``max_wait``
        more for the batch to fill."""
        size = self.options.batch_size
        got = self.source.receive(size, POLL_SECONDS)
        if not got:
            return []
        deadline = time.monotonic() + self.options.max_wait
        while len(got) < size and not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            got += self.source.receive(size - len(got), min(left, POLL_SECONDS))
        return got

    def _recover(self, exc: SemsearchError, failures: int) -> int:
        """Broker or store trouble: back off (full jitter, up to 30 s), then reconnect, which
        hands back what this connection held unacknowledged for redelivery. Returns the
        failures in a row so far."""
        pause = backoff_delay(failures, 0.5, 30.0)
        failures += 1
        self.report.reconnects += 1
        log.warning("consume: %s; reconnecting in %.1f s", exc, pause)
        if self.observer is not None:
            self.observer.reconnecting(str(exc), pause)
        if self.stop.wait(pause):
            return failures
        try:
            self.source.reconnect()
        except BrokerUnavailableError as again:
            log.warning("consume: reconnect failed: %s", again)
        return failures

    # -- one batch ---------------------------------------------------------------------------
    def _handle(self, deliveries: list[Delivery]) -> None:
        started = time.perf_counter()
        outcome = self._apply(deliveries)
        for delivery, reason in outcome.poison:
            self.source.dead_letter(delivery, reason)
        self._fail.hit("consume_before_ack")
        self.source.ack(deliveries)
        self._count(outcome, len(deliveries))
        seconds = time.perf_counter() - started
        lag = self._lag()
        if self.observer is not None:
            self.observer.batch(outcome.counts, seconds, lag)

    def _apply(self, deliveries: Sequence[Delivery]) -> _Outcome:
        counts = dict.fromkeys(OUTCOMES, 0)
        poison: list[tuple[Delivery, str]] = []
        parsed: list[tuple[int, ChangeEvent]] = []
        max_chars = self.engine.settings.max_text_chars
        for pos, d in enumerate(deliveries):
            try:
                parsed.append((pos, parse_event(d.body, max_chars)))
            except InputError as exc:
                poison.append((d, str(exc)))
        best, superseded = latest(parsed)
        counts["stale"] += len(superseded)
        writes = WriteCounts()
        for _ in range(CLAIM_ATTEMPTS):
            try:
                writes = self._commit({i: e for i, (_, e) in best.items()}, counts, poison,
                                      {i: deliveries[p] for i, (p, _) in best.items()})
                break
            except StaleWriteError:
                self.report.conflicts += 1  # another consumer applied newer versions
        else:
            raise StaleWriteError(sorted(best))
        counts["dead_letter"] = len(poison)
        return _Outcome(counts, poison, writes)

    def _commit(self, events: Mapping[str, ChangeEvent], counts: dict[str, int],
                poison: list[tuple[Delivery, str]],
                delivered: Mapping[str, Delivery]) -> WriteCounts:
        handle = self.engine.collection(self.collection, create=True)
        stored = self.engine.store.event_versions(handle.version, list(events))
        fresh = {i: e for i, e in events.items() if i not in stored or e.version > stored[i]}
        writes = WriteCounts()
        writer = BatchWriter(handle, writes, invalid="reject", refused="reject",
                             failpoints=self._fail)
        batch = Batch(upserts=[e.document() for e in fresh.values() if e.op == "upsert"],
                      deletes=[i for i, e in fresh.items() if e.op == "delete"])
        with writer.span(batch):
            prepared = writer.prepare(batch)
            refused = {i: prepared.rejected[shown(i)] for i in fresh
                       if shown(i) in prepared.rejected}
            versions = {i: e.version for i, e in fresh.items() if i not in refused}
            writer.commit(prepared, LedgerUpdate(source=self.source.name, versions=versions))
        self._writer = writer
        written = {w.document.id for w in prepared.writes}
        # Only now, the commit having held: a retried attempt must not count twice.
        counts["stale"] += len(events) - len(fresh)
        for i, e in fresh.items():
            if i in refused:
                poison.append((delivered[i], refused[i]))
            elif e.op == "delete":
                counts["deleted"] += 1
            else:
                counts["upserted" if i in written else "unchanged"] += 1
        return writes

    def _count(self, outcome: _Outcome, n: int) -> None:
        r, w, e = self.report, outcome.writes, outcome.writes.embed
        r.events += n
        r.batches += 1
        r.upserted += outcome.counts["upserted"]
        r.deleted += outcome.counts["deleted"]
        r.unchanged += outcome.counts["unchanged"]
        r.stale += outcome.counts["stale"]
        r.dead_lettered += outcome.counts["dead_letter"]
        r.chunks_written += w.chunks
        r.embedded += e.embedded
        r.model_calls += e.provider_calls
        r.tokens += e.tokens
        r.cache_hits += e.cache_hits
        r.cache_misses += e.cache_misses
        for d, reason in outcome.poison:
            if len(r.dead_letter_reasons) >= MAX_REASONS:
                break
            r.dead_letter_reasons.setdefault(_label(d), reason)

    def _lag(self) -> int | None:
        """The broker's backlog, asked at most once a second (one round trip)."""
        now = time.monotonic()
        if now - self._lag_at >= 1.0:
            self._lag_at = now
            try:
                self.report.lag = self.source.lag()
            except BrokerUnavailableError:
                self.report.lag = None
        return self.report.lag

    def _maybe_save(self) -> None:
        if time.monotonic() - self._saved_at >= self.options.save_every:
            self._save()

    def _save(self) -> None:
        """File-backed indexes are saved now and then and at exit; a crash between saves
        loses nothing (the store is the truth; the next open catches the index up)."""
        self._saved_at = time.monotonic()
        if self._writer is not None:
            try:
                self._writer.save()
            except SemsearchError as exc:
                log.warning("consume: saving the indexes failed (%s); they are rebuilt from "
                            "the store on the next open", exc)


def standby(engine: Engine, collection: str, stop: threading.Event, stack: ExitStack,
            on_wait: Callable[[str], None] | None = None) -> bool:
    """Wait until this process may consume ``collection``; False if stopped first.

    On an embedded home every process keeps its own copy of the derived indexes, so two
    writers of one collection would each rebuild theirs from the store after every batch of
    the other (and contend for the keyword index's file): there, one consumer works and any
    other waits as a hot standby, taking over when it stops or dies (the lock is an flock,
    gone with its process). Shared backends (PostgreSQL, Milvus) hold one copy of the
    indexes for every process: there, consumers compete. Call it before connecting to the
    broker, so a standby holds no messages."""
    if engine.index_storage.shared:
        return True
    told = False
    while not stop.is_set():
        try:
            stack.enter_context(engine.locks.hold(f"{collection}.consume"))
            return True
        except BusyError as exc:
            if not told and on_wait is not None:
                on_wait(f"another consumer of {collection!r} runs on this embedded home "
                        f"({exc}); standing by to take over. Competing consumers need a "
                        "shared backend (SEMSEARCH_STORE=postgresql://...)")
            told = True
            stop.wait(1.0)
    return False


def consume(engine: Engine, source: EventSource, collection: str, options: ConsumeOptions,
            stop: threading.Event | None = None,
            observer: ConsumeObserver | None = None) -> ConsumeReport:
    """Run a consumer until ``stop`` is set (or an idle or event limit is reached), and
    record the run in the run log."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    consumer = Consumer(engine, source, collection, options, stop, observer)
    try:
        return consumer.run()
    finally:
        report = consumer.report
        try:
            engine.store.record_run(collection, RUN_KIND, started_at, report.status,
                                    report.to_dict())
        except SemsearchError as exc:
            log.warning("consume: recording the run failed: %s", exc)


def _label(d: Delivery) -> str:
    head = d.body[:60].decode("utf-8", "replace")
    return head if len(d.body) <= 60 else head + "..."

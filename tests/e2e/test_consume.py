"""``semsearch consume`` end to end, once per real broker (RabbitMQ, NATS JetStream, Redis
Streams): real consumer processes, killed with SIGKILL mid-batch, stopped with SIGTERM,
competing on one subscription, and cut off from their broker, each time ending in exactly
the state the events describe (newest version per id; deleted ids gone), with every
message settled and every poison message dead-lettered with its reason."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest

from semsearch.config import Settings
from semsearch.core.events import Subscription
from semsearch.wiring import open_engine
from tests.brokers import BrokerHarness, free_port
from tests.brokers.proxy import OutageProxy
from tests.sync.conftest import collection_state

pytestmark = pytest.mark.brokers
MAX_CHARS = 2000


@pytest.fixture
def home(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The fake embedder (the model is not what is tested here), in the test's home."""
    monkeypatch.setenv("SEMSEARCH_EMBEDDER", "fake")
    monkeypatch.setenv("SEMSEARCH_MAX_TEXT_CHARS", str(MAX_CHARS))
    return Settings()


def _env(failpoint: str = "") -> dict[str, str]:
    env = dict(os.environ, SEMSEARCH_NO_PROGRESS="1")
    env.pop("SEMSEARCH_FAILPOINTS", None)
    if failpoint:
        env["SEMSEARCH_FAILPOINTS"] = failpoint
    return env


def _cmd(broker: BrokerHarness, sub: Subscription, *extra: str) -> list[str]:
    return [sys.executable, "-m", "semsearch", "consume", *broker.cli_args(sub), "-c", "docs",
            "--redeliver-after", "3", *extra]


def _run(broker: BrokerHarness, sub: Subscription, *extra: str,
         failpoint: str = "") -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(_cmd(broker, sub, *extra), env=_env(failpoint), capture_output=True,
                          text=True, timeout=240)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _upsert(i: str, v: int, text: str | None = None) -> dict[str, Any]:
    return {"op": "upsert", "id": i, "version": v, "title": f"title {i}",
            "text": text or f"document {i} at version {v} about topic {hash(i) % 7}",
            "metadata": {"v": v}}


def _delete(i: str, v: int) -> dict[str, Any]:
    return {"op": "delete", "id": i, "version": v}


def _encode(events: list[dict[str, Any]]) -> list[bytes]:
    return [json.dumps(e).encode() for e in events]


def expected(events: list[dict[str, Any]]) -> dict[str, str]:
    """What the events describe: the newest version per id; deleted ids absent."""
    newest: dict[str, dict[str, Any]] = {}
    for e in events:
        if e["id"] not in newest or e["version"] > newest[e["id"]]["version"]:
            newest[e["id"]] = e
    return {i: e["text"] for i, e in newest.items() if e["op"] == "upsert"}


def state(settings: Settings) -> dict[str, str]:
    engine = open_engine(settings)
    try:
        store = engine.store
        coll = engine.resolve("docs")
        ids = store.all_doc_ids(coll)
        collection_state(engine, coll)  # no duplicate chunks; indexes agree with the store
        return {i: store.get_document(coll, i)["text"] for i in ids}
    finally:
        engine.close()


def _wait_settled(broker: BrokerHarness, sub: Subscription, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while broker.unsettled(sub) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert broker.unsettled(sub) == 0


def test_events_apply_in_version_order_and_poison_is_dead_lettered(
        broker: BrokerHarness, sub: Subscription, home: Settings) -> None:
    events = [_upsert(f"p-{i}", 1) for i in range(12)]
    events += [_upsert("p-3", 3, "the third product, rewritten"),
               _upsert("p-3", 2, "a stale edit that arrives late"),  # older: ignored
               _upsert("p-5", 2), _delete("p-5", 3),  # update then delete: ends deleted
               _delete("p-7", "2026-11-30T12:00:00Z"),  # a timestamp beats integer 1
               _upsert("p-8", 1)]  # a redelivery of the same version: unchanged
    poison = [b"{not json", b'{"op": "upsert", "text": "no id", "version": 1}',
              b'{"op": "upsert", "id": "p-x", "text": "  ", "version": 1}',
              json.dumps(_upsert("p-big", 1, "x" * (MAX_CHARS + 1))).encode(),
              b'{"op": "delete", "id": "p-y", "version": "last tuesday"}']
    broker.publish(sub, _encode(events[:8]) + poison + _encode(events[8:]))
    proc = _run(broker, sub, "--idle-exit", "2", "--json", "--batch-size", "7")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    want = expected([e for e in events if e["id"] != "p-7"])  # p-7: deleted by a timestamp
    assert state(home) == want
    assert report["events"] == len(events) + len(poison)
    assert report["dead_lettered"] == len(poison)
    assert report["stale"] >= 2 and report["deleted"] >= 2
    reasons = [r for _, r in broker.dead_letters(sub)]
    assert sorted(b for b, _ in broker.dead_letters(sub)) == sorted(poison)
    for needle in ("not JSON", "no 'id'", "no 'text'", "limit is 2,000", "RFC 3339"):
        assert any(needle in r for r in reasons), (needle, reasons)
    _wait_settled(broker, sub)

    # Everything delivered again (a producer's retry): nothing changes, nothing is embedded.
    broker.publish(sub, _encode(events))
    again = json.loads(_run(broker, sub, "--idle-exit", "2", "--json").stdout)
    assert again["upserted"] == again["deleted"] == again["embedded"] == 0
    assert again["stale"] == len(events)
    assert state(home) == want


def test_kill_9_mid_batch_loses_nothing_and_duplicates_nothing(
        broker: BrokerHarness, sub: Subscription, home: Settings) -> None:
    events: list[dict[str, Any]] = []
    for v in range(1, 5):  # four rounds of edits over 30 ids, deletes in round 3
        for i in range(30):
            events.append(_delete(f"d-{i}", v) if v == 3 and i % 4 == 0 else
                          _upsert(f"d-{i}", v))
    broker.publish(sub, _encode(events))
    # Killed after its 3rd commit (before acknowledging it), then before its 2nd ack.
    for point in ("after_commit=3", "consume_before_ack=2"):
        killed = _run(broker, sub, "--batch-size", "10", "--max-wait-ms", "50",
                      failpoint=point)
        assert killed.returncode == -signal.SIGKILL, (point, killed.returncode, killed.stderr)
    done = _run(broker, sub, "--batch-size", "10", "--idle-exit", "5", "--json")
    assert done.returncode == 0, done.stderr
    assert state(home) == expected(events)
    _wait_settled(broker, sub)
    assert broker.dead_letters(sub) == []


@pytest.fixture
def shared_home(home: Settings, monkeypatch: pytest.MonkeyPatch,
                request: pytest.FixtureRequest) -> Settings:
    """The shared backend (PostgreSQL + pgvector), where consumers compete."""
    monkeypatch.setenv("SEMSEARCH_STORE", request.getfixturevalue("postgres_url"))
    return Settings()


def test_competing_consumers_metrics_and_sigterm(broker: BrokerHarness, sub: Subscription,
                                                 shared_home: Settings) -> None:
    port = free_port()
    procs = [subprocess.Popen(_cmd(broker, sub, "--batch-size", "8", "--max-wait-ms", "200",
                                   "--json", *extra), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for extra in (("--metrics-port", str(port)), ())]
    try:
        for p in procs:  # both connected and waiting before the first event
            assert p.stderr is not None
            assert "consume: " in p.stderr.readline()
        events = [_upsert(f"c-{i % 40}", v) for v in range(1, 6) for i in range(40)]
        for part in range(0, len(events), 4):  # trickling in while both wait to fill a batch
            broker.publish(sub, _encode(events[part:part + 4]))
            time.sleep(0.05)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and broker.unsettled(sub):
            time.sleep(0.2)
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = metrics.decode()
        assert 'semsearch_consume_events_total{collection="docs",outcome="upserted"}' in text
        assert "semsearch_consume_batch_seconds_bucket" in text
        assert "semsearch_consume_lag" in text
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "Traceback" not in err
        reports.append(json.loads(out))
    assert sum(r["events"] for r in reports) >= len(events)
    assert all(r["events"] > 0 for r in reports), reports
    assert state(shared_home) == expected(events)
    assert broker.unsettled(sub) == 0


def test_on_an_embedded_home_a_second_consumer_stands_by_then_takes_over(
        broker: BrokerHarness, sub: Subscription, home: Settings) -> None:
    first = subprocess.Popen(_cmd(broker, sub, "--json"), env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert first.stderr is not None and "consume: " in first.stderr.readline()
    second = subprocess.Popen(_cmd(broker, sub, "--json"), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert second.stderr is not None
        assert "standing by" in second.stderr.readline()
        events = [_upsert(f"s-{i}", 1) for i in range(10)]
        broker.publish(sub, _encode(events))
        _wait_settled(broker, sub)
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=60)
        assert first.returncode == 0, err
        assert json.loads(out)["events"] == 10
        assert "consume: " in second.stderr.readline()  # took over
        later = [_upsert(f"s-{i}", 2) for i in range(10)]
        broker.publish(sub, _encode(later))
        _wait_settled(broker, sub)
    finally:
        for p in (first, second):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert json.loads(out)["events"] == 10
    assert state(home) == expected(events + later)


def test_a_broker_outage_is_waited_out(broker: BrokerHarness, home: Settings) -> None:
    proxy = OutageProxy(int(broker.url.rsplit(":", 1)[1].split("/")[0]))
    direct = broker.fresh()
    through = dataclasses.replace(direct, url=broker.url_at(proxy.port))
    proc = subprocess.Popen(_cmd(broker, through, "--batch-size", "10", "--json"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = [_upsert(f"o-{i}", 1) for i in range(20)]
        broker.publish(direct, _encode(first))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and broker.unsettled(direct):
            time.sleep(0.2)
        proxy.outage(3.0)
        second = [_upsert(f"o-{i}", 2) for i in range(20)]
        broker.publish(direct, _encode(second))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and broker.unsettled(direct):
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        proxy.close()
        broker.cleanup(direct)
    assert proc.returncode == 0, err
    assert "reconnecting" in err and "Traceback" not in err
    assert json.loads(out)["reconnects"] >= 1
    assert state(home) == expected(first + second)


def test_bad_url_and_missing_queue_are_clear_errors(broker: BrokerHarness,
                                                    home: Settings) -> None:
    port = free_port()
    missing = broker.fresh(create=False)
    try:
        down = dataclasses.replace(missing, url=broker.url_at(port))
        proc = _run(broker, down)
        assert proc.returncode == 1 and f"127.0.0.1:{port}" in proc.stderr, proc.stderr
        proc = _run(broker, missing)
        assert proc.returncode == 2 and "--create" in proc.stderr, proc.stderr
    finally:
        broker.cleanup(missing)


def test_sigterm_mid_batch_commits_and_acknowledges_what_it_holds(
        broker: BrokerHarness, sub: Subscription, home: Settings) -> None:
    """A batch still filling (a 30 s wait limit) when SIGTERM comes is committed and
    acknowledged at once, then the process exits 0."""
    proc = subprocess.Popen(_cmd(broker, sub, "--batch-size", "1000", "--max-wait-ms", "30000",
                                 "--json"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None and "consume: " in proc.stderr.readline()
    events = [_upsert(f"t-{i}", 1) for i in range(30)]
    broker.publish(sub, _encode(events))
    time.sleep(1.5)  # received and held, the batch still filling
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 10  # not the 30 s wait
    report = json.loads(out)
    assert report["events"] == len(events) and report["status"] == "ok"
    assert broker.unsettled(sub) == 0
    assert state(home) == expected(events)

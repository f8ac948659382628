"""Monitoring end to end: CloudWatch EMF lines from the real ``semsearch`` executable, and
OpenTelemetry traces and metrics pushed to a loopback OTLP/HTTP receiver that decodes what
arrives with the protocol's own protobuf messages.

Every connection the process opens while exporting is recorded: the exporter must reach the
configured receiver and nothing else, even with proxy and ``OTEL_EXPORTER_OTLP_*`` variables
pointing elsewhere."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from semsearch.adapters.embedders.fake import FakeEmbedder
from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.services.quickstart import sample_dir
from tests.api.conftest import LiveServer
from tests.unit.test_emf import validate_emf

pb_trace = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the otel extra (opentelemetry-exporter-otlp-proto-http) is not installed")
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as pb_metrics  # noqa: E402

SEARCH_STEPS = {"semsearch.embed", "semsearch.dense", "semsearch.keyword", "semsearch.fusion",
                "semsearch.store"}
FAKE_MODEL = FakeEmbedder().identity.model
WRITE_STEPS = {"semsearch.chunk", "semsearch.embed", "semsearch.store_write",
               "semsearch.index_apply"}


# -- the receiver --------------------------------------------------------------------------
@dataclass
class Received:
    spans: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    resources: list[dict[str, Any]] = field(default_factory=list)
    posts: list[tuple[str, str]] = field(default_factory=list)  # (path, content type)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def _attrs(key_values: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in key_values}


class Receiver:
    """An OTLP/HTTP receiver on 127.0.0.1: POST /v1/traces and /v1/metrics, protobuf."""

    def __init__(self) -> None:
        self.got = Received()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                reply = receiver.accept(self.path, self.headers.get("Content-Type", ""), body)
                if reply is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accept(self, path: str, content_type: str, body: bytes) -> bytes | None:
        with self.lock:
            self.got.posts.append((path, content_type))
            if path == "/v1/traces":
                self._traces(pb_trace.ExportTraceServiceRequest.FromString(body))
                return pb_trace.ExportTraceServiceResponse().SerializeToString()
            if path == "/v1/metrics":
                self._metrics(pb_metrics.ExportMetricsServiceRequest.FromString(body))
                return pb_metrics.ExportMetricsServiceResponse().SerializeToString()
        return None

    def _traces(self, req: Any) -> None:
        for rs in req.resource_spans:
            self.got.resources.append(_attrs(rs.resource.attributes))
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.got.spans.append({
                        "name": s.name, "trace": s.trace_id.hex(), "id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "attrs": _attrs(s.attributes),
                        "ns": s.end_time_unix_nano - s.start_time_unix_nano})

    def _metrics(self, req: Any) -> None:
        for rm in req.resource_metrics:
            self.got.resources.append(_attrs(rm.resource.attributes))
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    kind = m.WhichOneof("data")
                    points = []
                    for p in getattr(m, kind).data_points:
                        point: dict[str, Any] = {"attrs": _attrs(p.attributes)}
                        if kind == "histogram":
                            point.update(count=p.count, sum=p.sum)
                        else:
                            point["value"] = _value_of_number(p)
                        points.append(point)
                    self.got.metrics.setdefault(m.name, []).extend(
                        {"kind": kind, "unit": m.unit, **pt} for pt in points)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value_of_number(point: Any) -> float:
    kind = point.WhichOneof("value")
    return float(getattr(point, kind))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every address this process connects a socket to, from here on."""
    seen: list[tuple[str, int]] = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self: socket.socket, address: Any) -> None:
        seen.append(tuple(address[:2]) if isinstance(address, tuple) else (str(address), 0))
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        seen.append(tuple(address[:2]) if isinstance(address, tuple) else (str(address), 0))
        return real_connect_ex(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return seen


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _misdirect(monkeypatch: pytest.MonkeyPatch) -> str:
    """Proxy and OTel variables that would send the export elsewhere if they were obeyed."""
    elsewhere = f"http://127.0.0.1:{_dead_port()}"
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy"):
        monkeypatch.setenv(var, elsewhere)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
    return elsewhere


def _children(spans: list[dict[str, Any]], parent: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in spans if s["parent"] == parent["id"] and s["trace"] == parent["trace"]]


def _total(points: list[dict[str, Any]], **attrs: Any) -> float:
    return sum(p.get("value", p.get("sum", 0.0)) for p in points
               if all(p["attrs"].get(k) == v for k, v in attrs.items()))


# -- OpenTelemetry: the HTTP service -------------------------------------------------------
def test_a_search_through_the_api_arrives_as_spans_and_metrics(
        receiver: Receiver, connections: list[tuple[str, int]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere_otel = f"http://127.0.0.1:{_dead_port()}"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", elsewhere_otel)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", elsewhere_otel + "/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", elsewhere_otel + "/v1/metrics")
    home = tmp_path / "home"
    home.mkdir()
    server = LiveServer(Settings(home=home, embedder="fake", embedder_price_per_mtok=2.0,
                                 otlp_endpoint=receiver.url)).start()
    try:
        elsewhere_proxy = _misdirect(monkeypatch)  # after start: the readiness poll uses httpx
        docs = [{"id": d.id, "text": d.text, "title": d.title, "metadata": dict(d.metadata)}
                for d in iter_documents(sample_dir())]
        with server.client(trust_env=False) as c:
            assert c.post("/collections", json={"name": "docs"}).status_code == 201
            r = c.post("/collections/docs/documents", json={"documents": docs})
            assert r.status_code == 200 and r.json()["new"] == 12, r.text
            r = c.get("/search", params={"q": "sourdough starter feeding", "collection": "docs",
                                         "k": 3, "mode": "hybrid"})
            assert r.status_code == 200 and r.json()["hits"][0]["doc_id"] == \
                "sourdough-starter.md"
            r = c.post("/search", json={"query": "compost", "collection": "docs", "k": 3,
                                        "mode": "keyword", "filter": {"type": "md"}})
            assert r.status_code == 200
    finally:
        server.stop()  # the lifespan's end closes the engine, which flushes both providers

    got = receiver.got
    assert {p for p, _ in got.posts} == {"/v1/traces", "/v1/metrics"}
    assert all(ct == "application/x-protobuf" for _, ct in got.posts)
    assert all(r.get("service.name") == "semsearch" for r in got.resources)
    # Only the receiver and the API server were ever connected to: neither the proxy nor the
    # OTEL_EXPORTER_OTLP_* endpoints, nor anything off this machine.
    assert connections and {a for a in connections} <= {
        ("127.0.0.1", receiver.port), ("127.0.0.1", server.port)}, connections
    assert ("127.0.0.1", receiver.port) in connections
    assert elsewhere_proxy and elsewhere_otel  # (named in the message above if reached)

    spans = got.spans
    (hybrid,) = [s for s in spans if s["name"] == "semsearch.search"
                 and s["attrs"]["semsearch.mode"] == "hybrid"]
    assert hybrid["attrs"]["semsearch.collection"] == "docs"
    assert hybrid["attrs"]["semsearch.model"] == FAKE_MODEL
    assert hybrid["attrs"]["semsearch.hits"] == 3
    steps = _children(spans, hybrid)
    assert {s["name"] for s in steps} >= SEARCH_STEPS, [s["name"] for s in steps]
    for step in steps:  # the keyword step ran on a worker thread and is still a child
        assert step["attrs"]["semsearch.collection"] == "docs"
        assert step["attrs"]["semsearch.model"] == hybrid["attrs"]["semsearch.model"]
        assert step["attrs"]["semsearch.mode"] == "hybrid"
        assert step["ns"] >= 0
    assert {s["attrs"]["semsearch.op"] for s in steps if s["name"] == "semsearch.store"} >= {
        "open_collection", "doc_ids_by_label", "chunks_by_label"}
    (request,) = [s for s in spans if s["id"] == hybrid["parent"]]
    assert request["name"] == "semsearch.request" and request["parent"] == ""
    assert request["attrs"]["http.route"] == "/search"
    assert request["attrs"]["http.response.status_code"] == 200

    (keyword,) = [s for s in spans if s["name"] == "semsearch.search"
                  and s["attrs"]["semsearch.mode"] == "keyword"]
    kw_steps = {s["name"] for s in _children(spans, keyword)}
    assert "semsearch.keyword" in kw_steps and "semsearch.dense" not in kw_steps
    assert "semsearch.embed" not in kw_steps  # keyword search never runs the model
    assert any(s["attrs"].get("semsearch.op") == "labels_matching"
               for s in _children(spans, keyword))

    (batch,) = [s for s in spans if s["name"] == "semsearch.write_batch"]
    assert batch["attrs"]["semsearch.collection"] == "docs"
    assert batch["attrs"]["semsearch.upserts"] == 12
    write_steps = _children(spans, batch)
    assert {s["name"] for s in write_steps} == WRITE_STEPS
    assert all(s["attrs"]["semsearch.model"] == hybrid["attrs"]["semsearch.model"]
               for s in write_steps)

    m = got.metrics
    assert _total(m["semsearch.search.duration"], **{"semsearch.mode": "hybrid"}) > 0
    hyb = [p for p in m["semsearch.search.duration"]
           if p["attrs"]["semsearch.mode"] == "hybrid"]
    assert hyb[0]["kind"] == "histogram" and hyb[0]["count"] == 1 and hyb[0]["unit"] == "s"
    assert {p["attrs"]["semsearch.stage"] for p in m["semsearch.search.stage.duration"]} >= {
        "embed", "dense", "keyword", "fusion"}
    assert _total(m["semsearch.request.duration"], **{"http.route": "/search"}) > 0
    assert _total(m["semsearch.tokens"]) > 0 and m["semsearch.tokens"][0]["kind"] == "sum"
    assert _total(m["semsearch.cost"]) > 0
    assert _total(m["semsearch.cache.misses"]) >= 12


# -- OpenTelemetry: the pipeline CLI -------------------------------------------------------
def test_an_index_run_from_the_cli_arrives_as_spans_and_run_counters(
        receiver: Receiver, connections: list[tuple[str, int]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from semsearch.cli.main import main

    monkeypatch.setenv("SEMSEARCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SEMSEARCH_EMBEDDER", "fake")
    monkeypatch.setenv("SEMSEARCH_NO_PROGRESS", "1")
    monkeypatch.setenv("SEMSEARCH_OTLP_ENDPOINT", receiver.url + "/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{_dead_port()}")
    _misdirect(monkeypatch)
    main(["index", str(sample_dir()), "-c", "notes", "--json"])  # returns: the run succeeded
    report = json.loads(capsys.readouterr().out)
    assert report["documents"] == 12 and report["tokens"] > 0
    main(["sync", "--source", str(sample_dir()), "-c", "notes-sync"])
    assert json.loads(capsys.readouterr().out)["rows_seen"] == 12

    assert {a for a in connections} == {("127.0.0.1", receiver.port)}, connections
    spans = receiver.got.spans
    (run,) = [s for s in spans if s["name"] == "semsearch.index"]
    assert run["parent"] == "" and run["attrs"] == {"semsearch.collection": "notes",
                                                    "semsearch.command": "index"}
    batches = [s for s in _children(spans, run) if s["name"] == "semsearch.write_batch"]
    assert len(batches) == 1
    steps = _children(spans, batches[0])
    assert {s["name"] for s in steps} == WRITE_STEPS
    for step in steps:
        assert step["attrs"]["semsearch.collection"] == "notes"
        assert step["attrs"]["semsearch.model"] == FAKE_MODEL
    (chunk,) = [s for s in steps if s["name"] == "semsearch.chunk"]
    assert chunk["attrs"]["semsearch.documents"] == 12

    m = receiver.got.metrics
    notes = {"semsearch.collection": "notes", "semsearch.command": "index"}
    assert _total(m["semsearch.run.documents"], **notes) == 12
    assert _total(m["semsearch.run.chunks"], **notes) == report["chunks"]
    assert _total(m["semsearch.run.tokens"], **notes) == report["tokens"] > 0
    assert _total(m["semsearch.run.failed"], **notes) == 0
    assert _total(m["semsearch.runs"], **notes, **{"semsearch.status": "ok"}) == 1
    (seconds,) = [p for p in m["semsearch.run.seconds"]
                  if p["attrs"]["semsearch.command"] == "index"]
    assert seconds["kind"] == "histogram" and seconds["count"] == 1 and seconds["sum"] > 0
    assert "semsearch.run.embed_p95_ms" not in m

    (sync_run,) = [s for s in spans if s["name"] == "semsearch.sync"]
    assert sync_run["parent"] == "" and sync_run["attrs"]["semsearch.collection"] == "notes-sync"
    sync_batches = [s for s in _children(spans, sync_run) if s["name"] == "semsearch.write_batch"]
    assert sync_batches and any(
        {c["name"] for c in _children(spans, b)} >= {"semsearch.chunk", "semsearch.store_write"}
        for b in sync_batches)
    synced = {"semsearch.collection": "notes-sync", "semsearch.command": "sync"}
    assert _total(m["semsearch.run.rows_seen"], **synced) == 12
    assert _total(m["semsearch.runs"], **synced, **{"semsearch.status": "ok"}) == 1


def test_a_collector_that_is_down_never_fails_the_run(tmp_path: Path) -> None:
    env = {**os.environ, "SEMSEARCH_HOME": str(tmp_path / "home"), "SEMSEARCH_NO_PROGRESS": "1",
           "SEMSEARCH_EMBEDDER": "fake",
           "SEMSEARCH_OTLP_ENDPOINT": f"http://127.0.0.1:{_dead_port()}"}
    out = subprocess.run([sys.executable, "-m", "semsearch", "index", str(sample_dir()), "-c",
                          "notes", "--metrics-format", "emf"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    validate_emf(json.loads(out.stdout))
    assert "Traceback" not in out.stderr


def test_bad_otlp_settings_are_one_clear_line(tmp_path: Path) -> None:
    base = {**os.environ, "SEMSEARCH_HOME": str(tmp_path / "home"), "SEMSEARCH_NO_PROGRESS": "1",
            "SEMSEARCH_EMBEDDER": "fake"}
    for env, says in (({"SEMSEARCH_OTLP_ENDPOINT": "collector:4318"}, "http://127.0.0.1:4318"),
                      ({"SEMSEARCH_METRICS_NAMESPACE": ""}, "SEMSEARCH_METRICS_NAMESPACE")):
        out = subprocess.run([sys.executable, "-m", "semsearch", "index", str(sample_dir()),
                              "-c", "notes"], capture_output=True, text=True,
                             env={**base, **env}, timeout=120)
        assert out.returncode == 2 and says in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_the_default_path_loads_no_opentelemetry(tmp_path: Path) -> None:
    """Without an endpoint, indexing and searching (library and CLI) import no OpenTelemetry
    module at all, and the app imports neither the SDK nor an exporter (recent FastAPI
    releases bring in OpenTelemetry's API themselves)."""
    code = f"""
import sys
from semsearch import Document, SearchRequest, Mode, open_engine, index_documents, search
from semsearch.config import Settings
import semsearch.cli.main
engine = open_engine(Settings(home={str(tmp_path / 'home')!r}, embedder="fake"))
index_documents(engine, "n", [Document("a", "kites fly in steady wind")])
assert search(engine, "n", SearchRequest("wind", mode=Mode.HYBRID)).hits
engine.close()
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
import semsearch.api.app
semsearch.api.app.create_app(Settings(home={str(tmp_path / 'home')!r}, embedder="fake"))
heavy = sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk",
               "opentelemetry.exporter", "semsearch.adapters.telemetry")))
assert not heavy, heavy
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_OTLP")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr


# -- CloudWatch EMF from the real executable -----------------------------------------------
def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "SEMSEARCH_HOME": str(home), "SEMSEARCH_NO_PROGRESS": "1",
            "SEMSEARCH_EMBEDDER": "fake", **env}
    full.pop("SEMSEARCH_OTLP_ENDPOINT", None)
    return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                          text=True, env=full, timeout=120)


def test_index_and_sync_print_one_valid_emf_line_each(tmp_path: Path) -> None:
    home = tmp_path / "home"
    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps(d) for d in (
        {"id": "a", "title": "Kites", "text": "Kites fly best in steady wind on open ground."},
        {"id": "b", "text": "Lighthouses warn ships away from rocks at night."},
        {"id": "empty", "text": "   "})) + "\n")

    out = _cli(home, "index", str(docs), "-c", "kites", "--metrics-format", "emf")
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    doc = json.loads(line)
    validate_emf(doc)
    assert doc["Command"] == "index" and doc["Collection"] == "kites"
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "semsearch"
    assert doc["documents"] == 3 and doc["new"] == 2 and doc["skipped"] == 1
    assert doc["failed"] == 0 and doc["status"] == "ok"
    assert "indexed 3 documents" in out.stderr  # the summary moved to stderr

    out = _cli(home, "sync", "--source", str(docs), "-c", "kites-sync", "--metrics-format",
               "emf", SEMSEARCH_METRICS_NAMESPACE="acme/search")
    assert out.returncode == 0, out.stderr
    (line,) = out.stdout.splitlines()
    doc = json.loads(line)
    validate_emf(doc)
    assert doc["Command"] == "sync" and doc["Collection"] == "kites-sync"
    assert doc["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "acme/search"
    assert doc["rows_seen"] == 3 and doc["new"] == 2 and doc["rejected"] == 1
    assert doc["cache_hits"] == 2  # the same texts were embedded by the index run
    assert doc["event"] == "sync_run" and doc["run_id"] >= 1 and "watermark" in doc

    # The default is today's plain JSON line, unchanged.
    out = _cli(home, "sync", "-c", "kites-sync")
    (line,) = out.stdout.splitlines()
    plain = json.loads(line)
    assert "_aws" not in plain and plain["event"] == "sync_run" and plain["unchanged"] == 2

    # A run that fails still prints its line: an alarm on `failed` sees it.
    out = _cli(home, "index", str(tmp_path / "missing"), "-c", "kites", "--metrics-format",
               "emf")
    assert out.returncode == 2 and "no such file" in out.stderr
    (line,) = out.stdout.splitlines()
    doc = json.loads(line)
    validate_emf(doc)
    assert doc["failed"] == 1 and [m["Name"] for m in
                                   doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]] == ["failed"]
    out = _cli(home, "sync", "--source", str(tmp_path / "missing"), "-c", "gone",
               "--metrics-format", "emf")
    assert out.returncode == 1
    (line,) = out.stdout.splitlines()
    doc = json.loads(line)
    validate_emf(doc)
    assert doc["failed"] == 1 and doc["Command"] == "sync" and doc["status"] == "failed"

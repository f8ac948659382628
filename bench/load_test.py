"""Bounded load test of the HTTP API on loopback.

    python bench/load_test.py                                   # sample corpus, 8 clients, 60 s
    python bench/load_test.py --seconds 30
    python bench/load_test.py --corpus ../shared/data/scifact --clients 8 --seconds 60
    python bench/load_test.py --compare --seconds 20 --rounds 3  # batching off vs on
    python bench/load_test.py --compare --server-process --baseline-src /tmp/old/src \
        --baseline-http h11                                      # an earlier checkout vs this
    python bench/load_test.py --compare --server-process \
        --baseline-env SEMSEARCH_CACHE_WRITE_DELAY_MS=0          # one setting's worth
    ... --client stdlib                                          # lighter clients than httpx

``--compare`` measures dynamic batching (``runtime.batching``) before and after in one run:
two servers on the same corpus, one with SEMSEARCH_BATCH_MAX_TEXTS=0 (off) and one with
batching on, loaded in turn (the order alternates each round, the same seed for both sides
of a round), each with --clients clients and then with one client (low load, for p99); it
prints both tables and the ratios on/off.

Starts the real server in this process (``create_app`` under uvicorn on 127.0.0.1, a free
port, a temporary SEMSEARCH_HOME), indexes the corpus through the API, then runs N client
threads (one ``httpx.Client`` each) for D seconds, each mixing ``GET /search`` (hybrid, a
random SciFact or sample query) and ``POST /embed`` (1-8 short texts of random query words,
so most miss the embedding cache; --embed-texts changes the 8). Prints requests, errors
(non-2xx, malformed answers or exceptions: must be 0), throughput and p50/p95/p99 latency
per endpoint and overall, as a markdown table. Exits 1 if any request failed.

Everything is bounded: server start-up and shutdown have timeouts, every client stops at the
deadline or after --max-requests, every request has a timeout. Clients and server share the
machine (and the GIL), so the numbers are for comparing runs, not for capacity planning."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from semsearch.adapters.sources import beir
from semsearch.adapters.sources.files import iter_documents
from semsearch.api.app import create_app
from semsearch.config import Settings
from semsearch.core.types import Document
from semsearch.services.quickstart import sample_dir

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMSEARCH_SHARED", REPO.parent / "shared"))
SCIFACT = SHARED / "data" / "scifact"
COLLECTION = "load"
SEARCH, EMBED = "GET /search", "POST /embed"

SAMPLE_QUERIES = [
    "how do I keep my vegetables fresh for longer?",
    "sourdough starter feeding schedule",
    "what to do for a minor burn",
    "composting kitchen scraps greens and browns",
    "fix a flat bicycle tire",
    "pour over coffee grind size and water temperature",
    "wifi router placement for better signal",
    "watering indoor plants in winter",
    "tips for learning a new language",
    "create a python virtual environment",
    "how to fall asleep faster",
    "are rooftop solar panels worth it",
]


def wait_ready(url: str, alive: Callable[[], bool], timeout: float) -> bool:
    """Poll ``/readyz`` until it answers 200 (True), the server dies or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


class Server:
    """uvicorn serving ``create_app(settings)`` on a free loopback port, in a thread."""

    def __init__(self, settings: Settings) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self, timeout: float = 180.0) -> Server:
        self.thread.start()
        if wait_ready(self.url, self.thread.is_alive, timeout):
            return self
        self.stop()
        raise RuntimeError(f"server at {self.url} did not become ready in {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)


# `semsearch serve` (one worker) as a separate process, loading onnxruntime before anything
# imports usearch (see main).
SERVE = ("import sys, onnxruntime, uvicorn; uvicorn.run('semsearch.api.app:create_app', "
         "factory=True, host='127.0.0.1', port=int(sys.argv[1]), log_level='warning'{})")
# What uvicorn picks by itself without uvloop and httptools installed (before semsearch
# declared them): --baseline-http h11 gives an earlier checkout the server it had.
PLAIN_HTTP = ", loop='asyncio', http='h11'"


class ServerProcess:
    """The server in its own process, configured by SEMSEARCH_* variables: its Python work
    no longer shares a GIL with the client threads (as in production)."""

    app = None  # nothing to inspect in this process

    def __init__(self, env: dict[str, str], log: Path, plain_http: bool = False) -> None:
        self.serve = SERVE.format(PLAIN_HTTP if plain_http else "")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.env, self.log = {**os.environ, **env}, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180.0) -> ServerProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-c", self.serve, str(self.port)],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc
        if wait_ready(self.url, lambda: proc.poll() is None, timeout):
            return self
        self.stop()
        raise RuntimeError(f"server at {self.url} did not become ready in {timeout:.0f} s:\n"
                           f"{self.log.read_text(errors='replace')[-2000:]}")

    def cpu_seconds(self) -> float:
        """CPU time (user + system, all threads) the server process has used: what a
        request costs, whatever else the machine runs (unlike its latency)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # not Linux
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load_corpus(corpus: Path | None, limit: int) -> tuple[list[Document], list[str]]:
    """Documents to index and the queries to search them with."""
    if corpus is None:
        docs = list(iter_documents(sample_dir()))
        queries = list(SAMPLE_QUERIES)
        if beir.is_beir_dir(SCIFACT):  # more (out-of-domain) query variety when available
            queries += list(beir.load_queries(SCIFACT).values())
    elif beir.is_beir_dir(corpus):
        docs = list(_take(beir.iter_corpus(corpus), limit))
        queries = list(beir.load_queries(corpus).values())
    else:
        docs = list(_take(iter_documents(corpus), limit))
        queries = list(SAMPLE_QUERIES)
    docs = [d for d in docs if (d.text or "").strip()]  # the API refuses empty documents
    if not docs or not queries:
        raise SystemExit(f"nothing to index or no queries in {corpus or sample_dir()}")
    return docs, queries


def _take(it: Iterator[Document], limit: int) -> Iterator[Document]:
    for i, d in enumerate(it):
        if limit and i >= limit:
            return
        yield d


def index(url: str, docs: Sequence[Document], batch: int, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    totals = {"documents": 0, "chunks": 0}
    with httpx.Client(base_url=url, timeout=timeout) as c:
        r = c.post("/collections", json={"name": COLLECTION})
        if r.status_code != 201:
            raise SystemExit(f"cannot create collection: {r.status_code} {r.text}")
        for i in range(0, len(docs), batch):
            body = {"documents": [{"id": d.id, "text": d.text, "title": d.title,
                                   "metadata": dict(d.metadata)} for d in docs[i:i + batch]]}
            r = c.post(f"/collections/{COLLECTION}/documents", json=body)
            if r.status_code != 200:
                raise SystemExit(f"indexing failed at document {i}: {r.status_code} {r.text}")
            report = r.json()
            totals["documents"] += report["documents"]
            totals["chunks"] += report["chunks"]
    return {**totals, "seconds": time.perf_counter() - started}


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {SEARCH: [], EMBED: []})
    errors: dict[str, int] = field(default_factory=lambda: {SEARCH: 0, EMBED: 0})
    samples: list[str] = field(default_factory=list)  # the first few failures, for the report

    def merge(self, other: Results) -> None:
        for k in self.latencies:
            self.latencies[k] += other.latencies[k]
            self.errors[k] += other.errors[k]
        self.samples += other.samples[: max(0, 10 - len(self.samples))]


def _short_text(rng: random.Random, words: Sequence[str]) -> str:
    return " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))


class _Answer:
    """What client_loop reads of a response (httpx.Response's names)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.content = status, body
        self.is_success = 200 <= status < 300

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class StdlibClient:
    """One keep-alive connection through ``http.client``: a load generator that costs the
    machine ~4x less CPU per request than httpx, so the clients take less of the cores the
    server is measured on (--client stdlib)."""

    def __init__(self, base_url: str, timeout: float) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                               timeout=timeout)

    def __enter__(self) -> StdlibClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()

    def _send(self, method: str, path: str, body: bytes | None) -> _Answer:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            return _Answer(resp.status, resp.read())
        except (OSError, http.client.HTTPException) as exc:
            self.conn.close()  # reconnects on the next request
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}") from exc

    def post(self, path: str, json: Any) -> _Answer:
        return self._send("POST", path, _json_bytes(json))

    def get(self, path: str, params: dict[str, Any]) -> _Answer:
        return self._send("GET", f"{path}?{urllib.parse.urlencode(params)}", None)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


CLIENTS: dict[str, Callable[[str, float], Any]] = {
    "httpx": lambda url, timeout: httpx.Client(base_url=url, timeout=timeout),
    "stdlib": StdlibClient,
}


def client_loop(url: str, seed: int, queries: Sequence[str], words: Sequence[str],
                embed_share: float, start: threading.Barrier, stop_at: list[float],
                max_requests: int, timeout: float, out: Results,
                embed_texts: int = 8, client: str = "httpx") -> None:
    rng = random.Random(seed)
    with CLIENTS[client](url, timeout) as c:
        start.wait(timeout=60)
        deadline = stop_at[0]
        for _ in range(max_requests):
            if time.perf_counter() >= deadline:
                break
            if rng.random() < embed_share:
                endpoint = EMBED
                texts = [_short_text(rng, words) for _ in range(rng.randint(1, embed_texts))]
                kwargs: dict[str, Any] = {"json": {"texts": texts,
                                                   "input_type": rng.choice(["query",
                                                                             "passage"])}}
            else:
                endpoint = SEARCH
                kwargs = {"params": {"q": rng.choice(queries), "collection": COLLECTION,
                                     "k": 10, "mode": "hybrid"}}
            t = time.perf_counter()
            problem = None
            try:
                if endpoint == EMBED:
                    r = c.post("/embed", **kwargs)
                    ok = (r.is_success and
                          len(r.json()["vectors"]) == len(kwargs["json"]["texts"]))
                else:
                    r = c.get("/search", **kwargs)
                    ok = r.is_success and isinstance(r.json()["hits"], list)
                if not ok:
                    problem = f"{endpoint} -> {r.status_code} {r.text[:200]}"
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                problem = f"{endpoint} -> {type(exc).__name__}: {exc}"
            out.latencies[endpoint].append(time.perf_counter() - t)
            if problem is not None:
                out.errors[endpoint] += 1
                if len(out.samples) < 10:
                    out.samples.append(problem)


def run_load(url: str, clients: int, seconds: float, queries: Sequence[str],
             embed_share: float, max_requests: int, timeout: float,
             seed: int, embed_texts: int = 8, client: str = "httpx") -> tuple[Results, float]:
    words = sorted({w.strip(".,;:?!()\"'") for q in queries for w in q.split()} - {""})
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]
    parts = [Results() for _ in range(clients)]
    threads = [threading.Thread(target=client_loop, name=f"client-{i}", daemon=True,
                                args=(url, seed + i, queries, words, embed_share, start,
                                      stop_at, max_requests, timeout, parts[i],
                                      embed_texts, client))
               for i in range(clients)]
    for th in threads:
        th.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds  # set before the barrier releases the clients
    start.wait(timeout=60)
    for th in threads:  # a client ends within one request timeout of the deadline
        th.join(timeout=max(0.0, stop_at[0] - time.perf_counter()) + timeout + 5)
    elapsed = time.perf_counter() - began
    stuck = [th.name for th in threads if th.is_alive()]
    total = Results()
    for p in parts:
        total.merge(p)
    if stuck:
        total.samples.append(f"clients still running after the join timeout: {stuck}")
    return total, elapsed


def table(res: Results, elapsed: float) -> str:
    rows = ["| endpoint | requests | errors | req/s | p50 ms | p95 ms | p99 ms | max ms |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    every = [x for v in res.latencies.values() for x in v]
    named = [*((k, v, res.errors[k]) for k, v in res.latencies.items()),
             ("overall", every, sum(res.errors.values()))]
    for name, lat, errs in named:
        if lat:
            p50, p95, p99 = np.percentile(np.asarray(lat) * 1000, [50, 95, 99])
            stats = f"{p50:.1f} | {p95:.1f} | {p99:.1f} | {max(lat) * 1000:.1f}"
        else:
            stats = "- | - | - | -"
        label = f"**{name}**" if name == "overall" else name
        rows.append(f"| {label} | {len(lat)} | {errs} | {len(lat) / elapsed:.1f} | {stats} |")
    return "\n".join(rows)


SIDES = ("off", "on")


def _start(make: Server | ServerProcess, docs: Sequence[Document], batch: int,
           warm_query: str, timeout: float,
           ) -> tuple[Server | ServerProcess, float, dict[str, Any]]:
    """Start ``make``, index the corpus through it and warm it with one search."""
    t = time.perf_counter()
    server = make.start()
    started = time.perf_counter() - t
    try:
        built = index(server.url, docs, batch, timeout=600)
        with httpx.Client(base_url=server.url, timeout=timeout) as c:
            c.get("/search", params={"q": warm_query, "collection": COLLECTION})
    except BaseException:
        server.stop()
        raise
    return server, started, built


def _batch_counters(server: Server | ServerProcess) -> Any:
    from semsearch.api.state import state_of

    if server.app is None:
        return None
    engine = state_of(server.app).engine
    return None if engine is None or engine.batcher is None else engine.batcher.counters


def _model_seconds(server: Server | ServerProcess) -> float:
    """Seconds the model has run in this server so far (its meter's call latencies; calls
    that overlap count twice, so with batching off this can exceed the wall time)."""
    from semsearch.api.state import state_of
    from semsearch.core.metering import MeterSnapshot

    if server.app is None:
        return 0.0
    engine = state_of(server.app).engine
    if engine is None:
        return 0.0
    model = engine.batcher.inner if engine.batcher is not None else engine.embedder.embedder
    return sum(model.meter.latencies_since(MeterSnapshot())) / 1000


def _rate(res: Results, elapsed: float, endpoint: str) -> float:
    return len(res.latencies[endpoint]) / elapsed if elapsed else 0.0


def _p99(res: Results, endpoint: str) -> float:
    lat = res.latencies[endpoint]
    return float(np.percentile(np.asarray(lat) * 1000, 99)) if lat else float("nan")


def compare(args: argparse.Namespace, docs: Sequence[Document], queries: Sequence[str]) -> int:
    """Batching off vs on, alternating, in one run: see the module docstring."""
    loads = {"high": args.clients, "low": 1}
    totals = {(side, load): (Results(), [0.0]) for side in SIDES for load in loads}
    busy = {key: 0.0 for key in totals}  # model seconds (see _model_seconds)
    cpu = {key: 0.0 for key in totals}  # server CPU seconds (--server-process)
    with tempfile.TemporaryDirectory(prefix="semsearch-load-") as tmp:
        servers: dict[str, Server | ServerProcess] = {}
        try:
            for side in SIDES:
                home = Path(tmp) / side
                extra: dict[str, Any] = {"batch_max_texts": 0} if side == "off" else {
                    "batch_wait_ms": args.wait_ms, "batch_max_texts": args.max_texts}
                make: Server | ServerProcess
                if args.baseline_src is not None and side == "off":
                    extra = {}  # the earlier checkout with its own defaults
                elif args.baseline_env and side == "off":
                    extra = {"batch_wait_ms": args.wait_ms, "batch_max_texts": args.max_texts}
                if args.server_process:
                    env = {"SEMSEARCH_HOME": str(home),
                           "SEMSEARCH_EMBEDDER_THREADS": str(args.threads),
                           **{f"SEMSEARCH_{k.upper()}": str(v) for k, v in extra.items()}}
                    if args.baseline_src is not None and side == "off":
                        env["PYTHONPATH"] = str(args.baseline_src.resolve())
                    if side == "off":
                        env.update(args.baseline_env)  # this checkout with other settings
                    make = ServerProcess(env, Path(tmp) / f"{side}.log", plain_http=(
                        side == "off" and args.baseline_http == "h11"))
                else:
                    os.environ["SEMSEARCH_HOME"] = str(home)
                    make = Server(Settings(home=home, embedder_threads=args.threads, **extra))
                servers[side], started, built = _start(make, docs, args.batch, queries[0],
                                                       args.timeout)
                print(f"batching {side}: server ready in {started:.1f} s; indexed "
                      f"{built['documents']} documents ({built['chunks']} chunks) in "
                      f"{built['seconds']:.1f} s", flush=True)
            for r in range(args.rounds):
                order = SIDES if r % 2 == 0 else SIDES[::-1]
                for load, clients in loads.items():
                    for side in order:
                        seconds = args.seconds if load == "high" else args.low_seconds
                        server = servers[side]
                        cpu_before = server.cpu_seconds() \
                            if isinstance(server, ServerProcess) else 0.0
                        model_before = _model_seconds(servers[side])
                        res, elapsed = run_load(servers[side].url, clients, seconds, queries,
                                                args.embed_share, args.max_requests,
                                                args.timeout, args.seed + 1000 * r,
                                                args.embed_texts, args.client)
                        model = _model_seconds(servers[side]) - model_before
                        total, spent = totals[(side, load)]
                        total.merge(res)
                        spent[0] += elapsed
                        busy[(side, load)] += model
                        if isinstance(server, ServerProcess):
                            cpu[(side, load)] += server.cpu_seconds() - cpu_before
                        print(f"round {r + 1}/{args.rounds} {load} load ({clients} clients) "
                              f"batching {side}: {_rate(res, elapsed, EMBED):.1f} /embed req/s, "
                              f"{_rate(res, elapsed, SEARCH):.1f} /search req/s"
                              + ("" if args.server_process else
                                 f", model calls {model / elapsed:.0%} of the time"),
                              flush=True)
            counters = _batch_counters(servers["on"])
        finally:
            for server in servers.values():
                server.stop()

    if args.baseline_env:
        print("\n'batching off' below is this checkout with "
              + " ".join(f"{k}={v}" for k, v in args.baseline_env.items())
              + "; 'on' is this checkout with its defaults")
    if args.baseline_src is not None:
        print(f"\n'batching off' below is the baseline checkout {args.baseline_src} with its "
              "own defaults; 'on' is this checkout with its defaults")
    print(f"\n{args.rounds} rounds, alternating; {args.embed_share:.0%} POST /embed "
          f"(1-{args.embed_texts} texts, {args.client} clients) / "
          f"{1 - args.embed_share:.0%} GET /search (hybrid, k=10); high load {args.clients} "
          f"clients x {args.seconds:.0f} s, low load 1 client x {args.low_seconds:.0f} s per "
          f"side and round; batching on: wait {args.wait_ms:g} ms, max {args.max_texts} texts; "
          f"servers {'in their own processes' if args.server_process else 'in this process'}")
    for load, clients in loads.items():
        for side in SIDES:
            res, spent = totals[(side, load)]
            print(f"\n### {load} load ({clients} client{'s' if clients > 1 else ''}), "
                  f"batching {side}\n")
            print(table(res, spent[0]))
            requests = sum(len(v) for v in res.latencies.values())
            if not args.server_process:
                print(f"\nmodel calls: {busy[(side, load)]:.1f} s in {spent[0]:.1f} s")
            elif requests:
                print(f"\nserver CPU: {cpu[(side, load)]:.1f} s, "
                      f"{cpu[(side, load)] / requests * 1000:.2f} ms per request")
    if counters is not None and counters.batches:
        print(f"\nbatcher: {counters.requests} requests ({counters.texts} texts) in "
              f"{counters.batches} model calls, {counters.requests / counters.batches:.2f} "
              f"requests per call on average, at most {counters.largest}; "
              f"{counters.bypassed} too large to gather, {counters.retried} retried alone")
    ratio_rows = ["| ratio on/off | value |", "| --- | ---: |"]
    for load in loads:
        (on, on_s), (off, off_s) = totals[("on", load)], totals[("off", load)]
        for endpoint in (EMBED, SEARCH):
            rate_off = _rate(off, off_s[0], endpoint)
            if rate_off:
                ratio_rows.append(f"| {load} load {endpoint} req/s | "
                                  f"{_rate(on, on_s[0], endpoint) / rate_off:.2f} |")
            p99_off = _p99(off, endpoint)
            if p99_off == p99_off and p99_off > 0:
                ratio_rows.append(f"| {load} load {endpoint} p99 | "
                                  f"{_p99(on, endpoint) / p99_off:.2f} |")
        n_on = sum(len(v) for v in on.latencies.values())
        n_off = sum(len(v) for v in off.latencies.values())
        if args.server_process and n_on and n_off and cpu[("off", load)] > 0:
            ratio_rows.append(f"| {load} load server CPU per request | "
                              f"{cpu[('on', load)] / n_on / (cpu[('off', load)] / n_off):.2f} |")
    print("\n" + "\n".join(ratio_rows))
    failed = False
    for key, (res, _) in totals.items():
        errors = sum(res.errors.values())
        if errors or res.samples:
            failed = True
            print(f"\nbatching {key[0]}, {key[1]} load: {errors} failed requests; first ones:",
                  file=sys.stderr)
            for sample in res.samples:
                print("  " + sample, file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", type=Path, default=None,
                    help="BEIR folder or documents folder (default: the bundled sample)")
    ap.add_argument("--limit", type=int, default=0, help="index at most this many documents")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--embed-share", type=float, default=0.5,
                    help="fraction of requests that are POST /embed (the rest: GET /search)")
    ap.add_argument("--embed-texts", type=int, default=8,
                    help="each POST /embed sends 1 to this many texts")
    ap.add_argument("--max-requests", type=int, default=100_000, help="per client")
    ap.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = cores)")
    ap.add_argument("--batch", type=int, default=64, help="documents per upsert request")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", action="store_true",
                    help="batching off vs on in this run (alternating rounds, same corpus)")
    ap.add_argument("--rounds", type=int, default=2, help="--compare: rounds per side")
    ap.add_argument("--server-process", action="store_true",
                    help="--compare: run each server in its own process (`semsearch serve`), "
                         "not in threads of this one: the clients' Python work no longer "
                         "competes with the server's for one GIL")
    ap.add_argument("--baseline-src", type=Path, default=None,
                    help="--compare --server-process: the 'off' side is this other checkout's "
                         "src/ (e.g. a git worktree of an earlier commit) with its defaults, "
                         "instead of this checkout with batching off")
    ap.add_argument("--client", choices=tuple(CLIENTS), default="httpx",
                    help="the clients' HTTP library: httpx (as before), or stdlib's http.client, "
                         "which leaves more of the machine to the server")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                    help="--compare --server-process: the 'off' side is this checkout with "
                         "batching on and these environment variables (repeatable), e.g. "
                         "SEMSEARCH_CACHE_WRITE_DELAY_MS=0: one setting's worth, in one run")
    ap.add_argument("--baseline-http", choices=("auto", "h11"), default="auto",
                    help="--baseline-src: 'h11' serves the earlier checkout on asyncio and h11, "
                         "what uvicorn chose before semsearch depended on uvloop and httptools")
    ap.add_argument("--low-seconds", type=float, default=10.0,
                    help="--compare: seconds of the one-client (low load) run per round")
    ap.add_argument("--wait-ms", type=float, default=Settings.model_fields[
        "batch_wait_ms"].default, help="--compare: batching on's SEMSEARCH_BATCH_WAIT_MS")
    ap.add_argument("--max-texts", type=int, default=Settings.model_fields[
        "batch_max_texts"].default, help="--compare: batching on's SEMSEARCH_BATCH_MAX_TEXTS")
    args = ap.parse_args(argv)
    if not (args.clients >= 1 and args.seconds > 0 and 0 <= args.embed_share <= 1
            and args.embed_texts >= 1):
        ap.error("need --clients >= 1, --seconds > 0, 0 <= --embed-share <= 1 and "
                 "--embed-texts >= 1")
    pairs = [item.partition("=") for item in args.baseline_env]
    if any(not k or not sep for k, sep, _ in pairs):
        ap.error("--baseline-env takes KEY=VALUE")
    args.baseline_env = {k: v for k, _, v in pairs}
    if args.baseline_env and (args.baseline_src is not None or not args.server_process
                              or not args.compare):
        ap.error("--baseline-env needs --compare --server-process and no --baseline-src")
    if args.baseline_src is not None and not (args.compare and args.server_process and
                                              (args.baseline_src / "semsearch").is_dir()):
        ap.error("--baseline-src needs --compare --server-process and a src/ folder holding "
                 "semsearch/")
    if args.compare and not (args.rounds >= 1 and args.low_seconds > 0 and args.max_texts >= 2
                             and args.wait_ms >= 0):
        ap.error("--compare needs --rounds >= 1, --low-seconds > 0, --max-texts >= 2 and "
                 "--wait-ms >= 0")

    # Load onnxruntime before anything imports usearch (the local vector index): in the
    # other order the import crashed the process (SIGSEGV) on 2026-12-01.
    import onnxruntime  # noqa: F401

    docs, queries = load_corpus(args.corpus, args.limit)
    if args.compare:
        return compare(args, docs, queries)
    with tempfile.TemporaryDirectory(prefix="semsearch-load-") as tmp:
        home = Path(tmp) / "home"
        os.environ["SEMSEARCH_HOME"] = str(home)
        settings = Settings(home=home, embedder_threads=args.threads)
        t = time.perf_counter()
        server = Server(settings).start()
        started = time.perf_counter() - t
        try:
            built = index(server.url, docs, args.batch, timeout=600)
            with httpx.Client(base_url=server.url, timeout=args.timeout) as c:  # warm-up
                c.get("/search", params={"q": queries[0], "collection": COLLECTION})
            res, elapsed = run_load(server.url, args.clients, args.seconds, queries,
                                    args.embed_share, args.max_requests, args.timeout,
                                    args.seed, args.embed_texts, args.client)
        finally:
            server.stop()

    print(f"server ready in {started:.1f} s; indexed {built['documents']} documents "
          f"({built['chunks']} chunks) from {args.corpus or 'the sample corpus'} in "
          f"{built['seconds']:.1f} s")
    print(f"{args.clients} clients for {elapsed:.1f} s, {args.embed_share:.0%} POST /embed "
          f"(1-{args.embed_texts} texts) / {1 - args.embed_share:.0%} GET /search (hybrid, k=10, "
          f"{len(queries)} queries)\n")
    print(table(res, elapsed))
    errors = sum(res.errors.values())
    if errors or res.samples:
        print(f"\n{errors} failed requests; first ones:", file=sys.stderr)
        for s in res.samples:
            print("  " + s, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

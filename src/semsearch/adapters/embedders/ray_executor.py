"""Embedding on Ray: ``--executor ray`` (a local Ray started for the run) or
``--executor ray://head:10001`` (an existing cluster, through Ray Client).

It is an ``Embedder`` like any other so that the one write path stays in charge: the
``CachedEmbedder`` in front of it sends only cache misses here, and the vectors come back,
in input order, to the same writer, ledger, atomic batches and counters as in-process.

Each call is one Ray Data job: ``map_batches`` over a fixed pool of actors, each of which
builds the configured embedder once from a picklable factory (the settings) and keeps it.
The texts travel as groups cut from the texts sorted by token length, each group ending
where one of the model's own batches ends (``plan_batches``): the model then sees exactly
the batches it sees in-process, so the vectors are the in-process ones bit for bit (int8's
per-batch activation scales included).

A crashed actor (a killed process, a lost node) is restarted and its call retried up to
``max_retries`` times; past that, or on any error other than a refused input, the run fails
with the reason and nothing of the batch is written. Ray is imported on first use only."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from semsearch.adapters.embedders.onnx_local import plan_batches
from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError, InputError
from semsearch.ports import Embedder, Tokenizer, Vectors

INSTALL = "pip install 'semsearch[ray]'"


@dataclass(frozen=True)
class RayOptions:
    """How the pool is laid out; ``address`` '' starts a local Ray for the run."""

    address: str = ""
    actors: int = 2
    group_size: int = 256  # texts per actor call (at least; groups end where batches end)
    batch_size: int = 8  # the local model's batch (SEMSEARCH_EMBED_BATCH_SIZE)
    actor_cpus: float = 1.0
    max_retries: int = 3
    failpoints: str = ""  # tests only: ray_actor_crash=N, ray_actor_crash_from=N
    marker_dir: str = ""  # where those failpoints count the run's actor calls


def parse_address(spec: str) -> str:
    """``ray://host:port`` checked for shape (the cluster is contacted on first use)."""
    parts = urlsplit(spec)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "ray" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise InputError(f"--executor {spec!r}: use ray://host:port (Ray Client's port, "
                         "10001 by default)")
    return f"ray://{parts.hostname}:{port}"


class RayExecutorEmbedder:
    """Same identity, tokenizer and metering as ``inner`` (the configured embedder: in this
    process it tokenizes, and embeds only the writer's retries after a refusal); the model
    runs in the actors."""

    def __init__(self, inner: Embedder, factory: Callable[[], Embedder],
                 options: RayOptions) -> None:
        self.inner = inner
        self.meter = ProviderMeter()
        self._factory = factory
        self._options = options
        self._lock = threading.Lock()
        self._ray: Any = None
        self._owns_ray = False
        self._refused: set[str] = set()  # texts of the last call the model refused
        if options.address:
            _reachable(options.address)  # a wrong address fails the run before it starts

    @property
    def identity(self) -> EmbedderIdentity:
        return self.inner.identity

    @property
    def tokenizer(self) -> Tokenizer:
        return self.inner.tokenizer

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        dim = self.identity.dimension
        out = np.zeros((len(texts), dim), dtype=np.float32)
        if not texts:
            return out
        if self._refused and set(texts) <= self._refused:
            return self._here(texts, input_type)
        self._refused = set()
        groups = self._groups(texts)
        ray = self._connect()
        rows = sorted(self._run(ray, [{"group": g, "texts": [texts[i] for i in idx]}
                                      for g, idx in enumerate(groups)], input_type),
                      key=lambda r: int(r["group"]))
        if len(rows) != len(groups):
            raise BackendError(f"the Ray executor returned {len(rows)} of {len(groups)} "
                               "groups of texts")
        for row in rows:
            if row["error"]:
                # The writer now asks again document by document to find the refused ones:
                # those small calls run here (a Ray job each would cost seconds), with the
                # model batching them exactly as in-process.
                self._refused = set(texts)
                raise InputError(_renumbered(str(row["error"]), groups[int(row["group"])]))
        for row in rows:
            idx = groups[int(row["group"])]
            out[idx] = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(idx), dim)
            latencies = np.frombuffer(row["latencies"], dtype=np.float64)
            self._record(int(row["calls"]), int(row["items"]), int(row["tokens"]),
                         [float(x) for x in latencies])
            self.meter.add(truncated=int(row["truncated"]), retries=int(row["retries"]))
        return out

    def _here(self, texts: Sequence[str], input_type: InputType) -> Vectors:
        meter = self.inner.meter
        before = meter.snapshot()
        try:
            return self.inner.embed(texts, input_type)
        finally:
            delta = meter.snapshot().minus(before)
            self._record(delta.calls, delta.items, delta.tokens, meter.latencies_since(before))
            self.meter.add(truncated=delta.truncated, retries=delta.retries)

    def _groups(self, texts: Sequence[str]) -> list[list[int]]:
        """Indexes of ``texts`` by group: sorted by the model's token count (stable, as the
        local model sorts its input), then cut where the model's own batches end
        (``plan_batches``) once a group holds ``group_size`` texts."""
        tokenizer, window = self.tokenizer, self.identity.max_tokens
        lengths = [min(tokenizer.count_tokens(t) + 2, window) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        groups: list[list[int]] = []
        start = 0
        for end in plan_batches([lengths[i] for i in order], self._options.batch_size):
            if end - start >= self._options.group_size or end == len(order):
                groups.append(order[start:end])
                start = end
        return groups

    def _record(self, calls: int, items: int, tokens: int, latencies_ms: list[float]) -> None:
        """Move a model's metering into this meter: the same calls, items, tokens and
        latencies it recorded (items and tokens on the first call: only sums are read)."""
        for n in range(max(calls, len(latencies_ms))):
            seconds = latencies_ms[n] / 1000 if n < len(latencies_ms) else 0.0
            self.meter.record_call(items if n == 0 else 0, tokens if n == 0 else 0, seconds)

    # -- Ray -----------------------------------------------------------------------------
    def _connect(self) -> Any:
        """Ray, started (local) or connected (ray://) once for the run, on first use."""
        with self._lock:
            if self._ray is not None:
                return self._ray
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            try:
                import ray
            except ImportError:
                raise InputError(f"--executor ray needs Ray: {INSTALL}") from None
            if not ray.is_initialized():
                _errors_to_stderr()
                self._init(ray)
                self._owns_ray = True
            self._ray = ray
            return ray

    def _init(self, ray: Any) -> None:
        address = self._options.address
        if address:
            try:
                ray.init(address, log_to_driver=False, logging_level=logging.ERROR)
            except Exception as exc:
                raise BackendError(f"cannot connect to the Ray cluster at {address}: "
                                   f"{_reason(exc)} (a cluster with token authentication "
                                   "needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN)") from None
            return
        needed = int(np.ceil(self._options.actors * self._options.actor_cpus))
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, needed),
                 include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level=logging.ERROR)

    def _run(self, ray: Any, items: list[dict[str, Any]],
             input_type: InputType) -> list[dict[str, Any]]:
        """The job, run here (a local Ray: this process is a Ray driver) or, through Ray
        Client, inside the cluster as a task that takes no CPU of its own (Ray Data's
        executor needs a real driver, which a Ray Client process is not)."""
        args = (items, self._factory, input_type.value, self._options)
        try:
            if ray.util.client.ray.is_connected():
                job = ray.remote(num_cpus=0, max_retries=0)(_embed_job)
                rows: list[dict[str, Any]] = ray.get(job.remote(*args))
            else:
                rows = _embed_job(*args)
        except Exception as exc:
            raise BackendError(f"the Ray executor failed (a crashed actor is restarted and "
                               f"its call retried up to {self._options.max_retries} times, "
                               f"SEMSEARCH_RAY_MAX_RETRIES): {_reason(exc)}") from None
        return rows

    def close(self) -> None:
        """Shut down the local Ray this run started (or leave the cluster it joined)."""
        with self._lock:
            if self._ray is not None and self._owns_ray:
                self._ray.shutdown()
            self._ray, self._owns_ray = None, False


def _embed_job(items: list[dict[str, Any]], factory: Callable[[], Embedder], input_type: str,
               o: RayOptions) -> list[dict[str, Any]]:
    """One Ray Data job: every group through ``map_batches`` over a fixed actor pool, one
    group per actor call, a crashed actor restarted and its call retried."""
    import ray.data

    # semsearch reports progress and failures itself; Ray Data's bars and logs are noise
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    source = ray.data.from_items(items, override_num_blocks=len(items))
    with warnings.catch_warnings():
        # max_restarts / max_task_retries still go through **ray_remote_args, which Ray
        # 2.5x marks deprecated without offering a named parameter for them.
        warnings.simplefilter("ignore")
        ds = source.map_batches(
            _EmbedActor, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=min(o.actors, len(items))),
            fn_constructor_args=(factory, input_type, o.failpoints, o.marker_dir),
            num_cpus=o.actor_cpus, max_restarts=o.max_retries, max_task_retries=o.max_retries)
    rows: list[dict[str, Any]] = ds.take_all()
    return rows


def _errors_to_stderr() -> None:
    """Ray prints its raylet's messages to the driver (a task retried, a worker killed) on
    stdout, where semsearch writes its JSON: send them to stderr, with the diagnostics.
    (A private hook of Ray's; if it moves, the messages simply stay on stdout.)"""
    try:
        from ray._private import worker
    except ImportError:
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None or getattr(original, "semsearch_stderr", False):
        return

    def to_stderr(data: dict[str, Any], ignore_prefix: bool) -> None:
        original({**data, "is_err": True}, ignore_prefix)

    to_stderr.semsearch_stderr = True  # type: ignore[attr-defined]
    worker.print_to_stdstream = to_stderr


def _renumbered(message: str, idx: list[int]) -> str:
    """An embedder's "text #i ..." counts within the group it saw: count in the caller's
    texts instead, as in-process."""
    found = re.match(r"text #(\d+)\b", message)
    if found is None or int(found.group(1)) >= len(idx):
        return message
    return f"text #{idx[int(found.group(1))]}{message[found.end():]}"


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Fail at once, in words, when nothing listens at a ray:// address (Ray Client would
    retry for half a minute first)."""
    parts = urlsplit(address)
    try:
        with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=timeout):
            pass
    except OSError as exc:
        raise BackendError(f"cannot reach the Ray cluster at {address}: "
                           f"{exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    """The last meaningful line of a Ray error (they carry whole remote tracebacks)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text[:500]


class _EmbedActor:
    """One per pool slot: builds the embedder once, then embeds group after group. A
    refused input comes back as data (the writer's refusal handling runs in the driver);
    any other error fails the job."""

    def __init__(self, factory: Callable[[], Embedder], input_type: str, failpoints: str,
                 marker_dir: str) -> None:
        self._embedder = factory()
        self._input_type = InputType(input_type)
        self._crash = _failpoints(failpoints)
        self._marker_dir = marker_dir

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {k: [] for k in (
            "group", "vectors", "error", "calls", "items", "tokens", "truncated", "retries",
            "latencies")}
        for group, texts in zip(batch["group"], batch["texts"], strict=True):
            self._failpoint()
            meter = self._embedder.meter
            before = meter.snapshot()
            error = ""
            try:
                vectors = self._embedder.embed([str(t) for t in texts], self._input_type)
            except InputError as exc:
                vectors, error = np.zeros((0,), dtype=np.float32), str(exc)
            delta = meter.snapshot().minus(before)
            out["group"].append(int(group))
            out["vectors"].append(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            out["error"].append(error)
            for name in ("calls", "items", "tokens", "truncated", "retries"):
                out[name].append(int(getattr(delta, name)))
            out["latencies"].append(
                np.asarray(meter.latencies_since(before), dtype=np.float64).tobytes())
        return {k: np.array(v, dtype=object) if k in ("vectors", "latencies", "error")
                else np.array(v, dtype=np.int64) for k, v in out.items()}

    def _failpoint(self) -> None:
        """Tests only: kill this actor's process, as an out-of-memory kill or a lost node
        would, at the run's N-th actor call (``ray_actor_crash=N``: once), or at the N-th
        and every later one (``ray_actor_crash_from=N``: a permanent failure). Calls are
        counted across processes in a file, so a restarted actor counts on."""
        once, always = self._crash.get("ray_actor_crash"), self._crash.get("ray_actor_crash_from")
        if (once is None and always is None) or not self._marker_dir:
            return
        import fcntl

        with open(Path(self._marker_dir) / "ray_actor_calls", "a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            n = int(f.read() or 0) + 1
            f.seek(0)
            f.truncate()
            f.write(str(n))
            f.flush()
        if n == once or (always is not None and n >= always):
            os.kill(os.getpid(), signal.SIGKILL)


def _failpoints(spec: str) -> dict[str, int]:
    """``name=N,...`` (SEMSEARCH_FAILPOINTS's format)."""
    points: dict[str, int] = {}
    for part in spec.split(","):
        if "=" in part:
            name, n = part.split("=", 1)
            points[name.strip()] = int(n)
    return points

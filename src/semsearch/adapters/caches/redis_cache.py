"""Embedding cache in Redis: raw little-endian float32 bytes by key, one round trip per call.

The cache is an optimisation, never a dependency: when Redis is unreachable (connection
refused, timeout, reset) or answers with an error (OOM, read-only replica, auth, protocol: any
``redis.RedisError`` or ``OSError``), ``get_many`` answers as an empty cache and ``put_many``
drops its writes; the error is counted in the meter and logged once as a warning. For
``retry_interval`` seconds after a failure no call touches the network, so a dead cache costs
ingest nothing; after that the next call tries again, and the first success logs ``recovered``
and re-arms the warning. Values that do not decode to a finite float32 vector are counted
``corrupt`` and served as misses, so the caller re-embeds and overwrites them.

``redis`` (redis-py) is imported only when a cache is built, so the core runs without it."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from semsearch.core.metering import CacheMeter
from semsearch.errors import BackendError
from semsearch.ports import Vectors

log = logging.getLogger("semsearch.cache")

_LE_F32 = np.dtype("<f4")


def redact_url(url: str) -> str:
    """``redis://user:secret@host:6379/0`` -> ``redis://user:***@host:6379/0`` for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def encode_vector(vector: Vectors) -> bytes | None:
    """Little-endian float32 bytes, or None for a vector that must not be stored (empty,
    not one-dimensional, or containing NaN/inf: it would only be read back as corrupt)."""
    arr = np.asarray(vector)
    if arr.ndim != 1 or arr.shape[0] == 0 or not np.isfinite(arr).all():
        return None
    return np.ascontiguousarray(arr, dtype=_LE_F32).tobytes()


def decode_vector(value: Any) -> Vectors | None:
    """The vector stored in ``value``, or None when it is not a positive whole number of
    finite float32s."""
    if not isinstance(value, bytes | bytearray | memoryview):
        return None
    raw = bytes(value)
    if not raw or len(raw) % 4:
        return None
    vec = np.frombuffer(raw, dtype=_LE_F32).astype(np.float32, copy=False)
    if not np.isfinite(vec).all():
        return None
    return vec


class RedisEmbeddingCache:
    """``url`` is ``redis://host:port/db`` (``rediss://`` and ``unix://`` work too). Keys are
    stored as ``"{namespace}:emb:{key}"``; ``ttl_seconds`` sets an expiry on every write.
    ``client`` injects a ready client (any object with redis-py's ``mget``/``pipeline``); an
    injected client is not closed by ``close()``. ``clock`` is injectable for tests."""

    def __init__(self, url: str, namespace: str = "semsearch", ttl_seconds: int | None = None,
                 socket_timeout: float = 0.5, retry_interval: float = 5.0,
                 meter: CacheMeter | None = None, client: Any = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_seconds is not None and ttl_seconds <= 0:
            raise ValueError(f"ttl_seconds must be positive or None, got {ttl_seconds}")
        if retry_interval < 0:
            raise ValueError(f"retry_interval must be >= 0, got {retry_interval}")
        self.url = url
        self.namespace = namespace
        self.ttl_seconds = ttl_seconds
        self.retry_interval = retry_interval
        self.meter = meter if meter is not None else CacheMeter()
        self._prefix = f"{namespace}:emb:"
        self._shown_url = redact_url(url)
        self._clock = clock
        self._state_lock = threading.Lock()
        self._down_until: float | None = None  # set while in an outage: skip the network
        self._warned = False  # a warning was logged for the current outage
        self._owns_client = client is None
        self._failures: tuple[type[BaseException], ...]
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            if client is None:
                raise BackendError(
                    "the Redis embedding cache needs the redis package: pip install redis"
                ) from exc
            self._failures = (OSError,)
        else:
            # Connection refused/reset, timeouts, and a server that answers but will not
            # serve (OOM, read-only replica, auth, not speaking RESP): all degrade.
            self._failures = (redis.exceptions.RedisError, OSError)
            if client is None:
                # No client-side retries: a failure puts the cache in degraded mode at once
                # and the retry_interval decides when to try again.
                try:
                    client = redis.Redis.from_url(
                        url, socket_timeout=socket_timeout,
                        socket_connect_timeout=socket_timeout, retry=Retry(NoBackoff(), 0))
                except ValueError as exc:
                    raise BackendError(f"bad Redis URL {self._shown_url}: {exc}") from exc
        self._client: Any = client

    # -- the EmbeddingCache protocol -------------------------------------------------------

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        if not self._available():
            self.meter.add(misses=len(unique))
            return {}
        try:
            values = self._client.mget([self._prefix + k for k in unique])
        except self._failures as exc:
            self._failed(exc, "get")
            self.meter.add(misses=len(unique))
            return {}
        self._succeeded()
        found: dict[str, Vectors] = {}
        corrupt = 0
        for key, value in zip(unique, values, strict=True):
            if value is None:
                continue
            vec = decode_vector(value)
            if vec is None:
                corrupt += 1
            else:
                found[key] = vec
        self.meter.add(hits=len(found), misses=len(unique) - len(found), corrupt=corrupt)
        return found

    def put_many(self, items: Mapping[str, Vectors]) -> None:
        encoded = [(self._prefix + k, b) for k, v in items.items()
                   if (b := encode_vector(v)) is not None]
        if not encoded or not self._available():
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, blob in encoded:
                pipe.set(key, blob, ex=self.ttl_seconds)
            pipe.execute()
        except self._failures as exc:
            self._failed(exc, "put")
            return
        self._succeeded()

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            with contextlib.suppress(*self._failures):  # already gone: nothing to release
                self._client.close()

    # -- outage handling --------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while the cache is in an outage (last attempt failed, not yet recovered)."""
        with self._state_lock:
            return self._down_until is not None

    def _available(self) -> bool:
        with self._state_lock:
            return self._down_until is None or self._clock() >= self._down_until

    def _failed(self, exc: BaseException, op: str) -> None:
        self.meter.add(errors=1)
        with self._state_lock:
            self._down_until = self._clock() + self.retry_interval
            first = not self._warned
            self._warned = True
        if first:
            log.warning("embedding cache %s unavailable (%s on %s: %s); serving as an empty "
                        "cache, retrying every %.1fs", self._shown_url, type(exc).__name__,
                        op, exc, self.retry_interval)
        else:
            log.debug("embedding cache %s still unavailable: %s", self._shown_url, exc)

    def _succeeded(self) -> None:
        with self._state_lock:
            if self._down_until is None and not self._warned:
                return
            was_warned = self._warned
            self._down_until = None
            self._warned = False
        if was_warned:
            log.info("embedding cache %s recovered", self._shown_url)

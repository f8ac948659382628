"""The ``EmbeddingCache`` contract, then each backend's specifics: Redis (one round trip,
TTL, namespaces, corrupt values, degrade and recovery on outages), the LRU, and SQLite on a
full disk.

The contract runs over ``BACKENDS``, one factory per cache (SQLite, Redis, an LRU in front of
either, and the null cache, which stores nothing and so keeps only the part of the contract
that a cache storing nothing can keep). A new backend joins by adding a ``pytest.param``.

Redis tests (marked ``redis``) run against a real server on 127.0.0.1:6379, database 15,
flushed around every test. Nothing is skipped: if the server is down they fail and say so
(CI starts it); ``-m 'not redis'`` leaves them out. The outage tests also start private
``redis-server`` processes on free ports."""

from __future__ import annotations

import logging
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from semsearch.adapters.caches.lru import LruEmbeddingCache
from semsearch.adapters.caches.redis_cache import RedisEmbeddingCache, redact_url
from semsearch.adapters.caches.sqlite import NullEmbeddingCache, SqliteEmbeddingCache
from semsearch.adapters.caches.write_behind import WriteBehindCache
from semsearch.core.metering import CacheMeter
from semsearch.errors import BackendError
from semsearch.ports import EmbeddingCache, Vectors
from tests import full_disk

REDIS_HOST, REDIS_PORT, REDIS_DB = "127.0.0.1", 6379, 15
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
DIM = 384
LOGGER = "semsearch.cache"


# -- helpers ------------------------------------------------------------------------------------

def vec(seed: int, dim: int = DIM) -> Vectors:
    out: Vectors = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return out


def key(i: int) -> str:
    """Shaped like core.cache_keys: ``<16-hex scope>:<sha256 hex>``."""
    return f"{'ab' * 8}:{i:064x}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def dead_url() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def infos_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.INFO]


class CountingRedis(redis.Redis):
    """Records every command sent outside a pipeline, and every pipeline executed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []
        self.pipelines: list[int] = []  # commands per executed pipeline

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]).upper())
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = super().pipeline(transaction=transaction, shard_hint=shard_hint)
        run, counts = pipe.execute, self.pipelines

        def execute(raise_on_error: bool = True) -> Any:
            counts.append(len(pipe.command_stack))
            return run(raise_on_error)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


class SwitchableClient:
    """Delegates to whichever real client ``target`` is: lets a test move a cache's client
    from a dead port to the live server."""

    def __init__(self, target: redis.Redis) -> None:
        self.target = target
        self.calls = 0

    def mget(self, keys: Sequence[str]) -> Any:
        self.calls += 1
        return self.target.mget(keys)

    def pipeline(self, transaction: bool = True) -> Any:
        self.calls += 1
        return self.target.pipeline(transaction=transaction)

    def close(self) -> None:
        self.target.close()


class DictCache:
    """A spy inner cache for the LRU."""

    def __init__(self) -> None:
        self.data: dict[str, Vectors] = {}
        self.gets: list[list[str]] = []
        self.puts: list[list[str]] = []
        self.closed = False
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        with self._lock:
            self.gets.append(list(keys))
            return {k: self.data[k] for k in keys if k in self.data}

    def put_many(self, items: Mapping[str, Vectors]) -> None:
        with self._lock:
            self.puts.append(list(items))
            self.data.update(items)

    def close(self) -> None:
        self.closed = True


def no_client_retries() -> Any:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return Retry(NoBackoff(), 0)


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture
def rdb() -> Iterator[redis.Redis]:
    """A client on db 15 of the shared server, flushed before and after the test."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_timeout=2,
                         socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need a Redis server on {REDIS_HOST}:{REDIS_PORT} "
                    f"(start one with `redis-server`): {exc}", pytrace=False)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def make_redis(rdb: redis.Redis) -> Iterator[Callable[..., RedisEmbeddingCache]]:
    made: list[RedisEmbeddingCache] = []

    def make(**kwargs: Any) -> RedisEmbeddingCache:
        kwargs.setdefault("url", REDIS_URL)
        cache = RedisEmbeddingCache(**kwargs)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.close()


class RedisServer:
    """A private, non-persistent redis-server on a fixed port that can be killed and
    restarted."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("the outage tests need the redis-server binary on PATH", pytrace=False)
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5,
                            socket_connect_timeout=0.5, retry=no_client_retries())
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {self.port}",
                                pytrace=False)
                time.sleep(0.05)
        finally:
            probe.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# -- the contract every EmbeddingCache keeps ----------------------------------------------------

def check_cache_contract(cache: EmbeddingCache) -> None:
    items = {key(i): vec(i) for i in range(300)}
    # round trip, exactly
    cache.put_many(items)
    got = cache.get_many(list(items))
    assert set(got) == set(items)
    for k, v in items.items():
        assert got[k].dtype == np.float32
        assert got[k].shape == (DIM,)
        assert np.array_equal(got[k], v)
    # missing keys are absent, not None
    assert cache.get_many([key(10_000), key(10_001)]) == {}
    mixed = cache.get_many([key(10_000), key(5), key(10_001)])
    assert list(mixed) == [key(5)]
    assert np.array_equal(mixed[key(5)], items[key(5)])
    # empty calls
    assert cache.get_many([]) == {}
    cache.put_many({})
    # overwrite (also with another dimension)
    cache.put_many({key(1): vec(999), key(2): vec(998, dim=8)})
    again = cache.get_many([key(1), key(2)])
    assert np.array_equal(again[key(1)], vec(999))
    assert np.array_equal(again[key(2)], vec(998, dim=8))
    # duplicates in one call: one entry each
    dup = cache.get_many([key(3), key(3), key(4), key(3), key(20_000), key(20_000)])
    assert sorted(dup) == sorted([key(3), key(4)])
    assert np.array_equal(dup[key(3)], items[key(3)])
    # a mutated input or output array does not change what the cache holds
    mine = vec(7)
    cache.put_many({key(7): mine})
    mine[:] = 0
    assert np.array_equal(cache.get_many([key(7)])[key(7)], vec(7))


def check_null_cache_contract(cache: EmbeddingCache) -> None:
    """What a cache that stores nothing still owes: every lookup misses, nothing fails."""
    items = {key(i): vec(i) for i in range(20)}
    cache.put_many(items)
    cache.put_many({})
    assert cache.get_many(list(items)) == {}
    assert cache.get_many([]) == {}


Make = Callable[[pytest.FixtureRequest, Path], EmbeddingCache]


@dataclass(frozen=True)
class CacheBackend:
    make: Make  # called again with the same folder: the same cache (a restart, another process)
    stores: bool = True  # False: the null cache, every lookup a miss


def _sqlite(request: pytest.FixtureRequest, folder: Path) -> EmbeddingCache:
    return SqliteEmbeddingCache(folder / "cache.db")


def _redis(request: pytest.FixtureRequest, folder: Path) -> EmbeddingCache:
    make: Callable[..., RedisEmbeddingCache] = request.getfixturevalue("make_redis")
    return make(namespace="contract")


def _lru(inner: Make) -> Make:
    return lambda request, folder: LruEmbeddingCache(inner(request, folder), max_items=1000)


def _behind(inner: Make) -> Make:
    return lambda request, folder: WriteBehindCache(inner(request, folder), delay=0.01)


BACKENDS = [
    pytest.param(CacheBackend(_sqlite), id="sqlite"),
    pytest.param(CacheBackend(_redis), id="redis", marks=pytest.mark.redis),
    pytest.param(CacheBackend(_lru(_sqlite)), id="lru-sqlite"),
    pytest.param(CacheBackend(_lru(_redis)), id="lru-redis", marks=pytest.mark.redis),
    pytest.param(CacheBackend(_behind(_sqlite)), id="behind-sqlite"),
    pytest.param(CacheBackend(_lru(_behind(_sqlite))), id="lru-behind-sqlite"),  # the server's
    pytest.param(CacheBackend(_behind(_redis)), id="behind-redis", marks=pytest.mark.redis),
    pytest.param(CacheBackend(lambda r, f: NullEmbeddingCache(), stores=False), id="null"),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> CacheBackend:
    b: CacheBackend = request.param
    return b


@pytest.fixture
def open_cache(backend: CacheBackend, request: pytest.FixtureRequest,
               tmp_path: Path) -> Iterator[Callable[[], EmbeddingCache]]:
    opened: list[EmbeddingCache] = []

    def open_() -> EmbeddingCache:
        opened.append(backend.make(request, tmp_path))
        return opened[-1]

    yield open_
    for cache in opened:
        cache.close()


def test_cache_contract(backend: CacheBackend, open_cache: Callable[[], EmbeddingCache]) -> None:
    if backend.stores:
        check_cache_contract(open_cache())
    else:
        check_null_cache_contract(open_cache())


def test_vectors_outlive_the_cache_object(backend: CacheBackend,
                                          open_cache: Callable[[], EmbeddingCache]) -> None:
    """A restart (or another process) finds what was stored, exactly."""
    first = open_cache()
    items = {key(i): vec(i) for i in range(50)}
    first.put_many(items)
    first.close()
    again = open_cache()
    got = again.get_many(list(items))
    if not backend.stores:
        assert got == {}
        return
    assert set(got) == set(items)
    assert all(np.array_equal(got[k], v) for k, v in items.items())


def test_concurrent_readers_and_writers(backend: CacheBackend,
                                        open_cache: Callable[[], EmbeddingCache]) -> None:
    cache = open_cache()
    vectors = {key(i): vec(i, dim=16) for i in range(200)}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(50):
                ks = rnd.sample(list(vectors), 10)
                if rnd.random() < 0.5:
                    cache.put_many({k: vectors[k] for k in ks})
                else:
                    for k, v in cache.get_many(ks).items():
                        assert np.array_equal(v, vectors[k])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cache.put_many(vectors)
    assert len(cache.get_many(list(vectors))) == (len(vectors) if backend.stores else 0)


def test_lru_contract_with_small_capacity(tmp_path: Path) -> None:
    # Most entries evicted: served from the inner cache, same answers.
    cache = LruEmbeddingCache(SqliteEmbeddingCache(tmp_path / "c.db"), max_items=16)
    try:
        check_cache_contract(cache)
        assert len(cache) <= 16
    finally:
        cache.close()


# -- write-behind -------------------------------------------------------------------------------

class RecordingCache:
    """An in-memory inner cache that records each put_many call (and can be made to fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.items: dict[str, Vectors] = {}
        self.puts: list[int] = []
        self.fail = fail
        self.closed = False

    def get_many(self, keys: Sequence[str]) -> dict[str, Vectors]:
        return {k: self.items[k] for k in keys if k in self.items}

    def put_many(self, items: Mapping[str, Vectors]) -> None:
        if self.fail:
            raise RuntimeError("the cache's server went away")
        self.puts.append(len(items))
        self.items.update(items)

    def close(self) -> None:
        self.closed = True


def test_write_behind_gathers_many_writes_into_one_and_reads_its_own() -> None:
    inner = RecordingCache()
    cache = WriteBehindCache(inner, delay=0.2)
    try:
        for i in range(20):  # twenty requests' writes within the delay
            cache.put_many({key(i): vec(i)})
        got = cache.get_many([key(3), key(99)])  # pending: answered before the write
        assert set(got) == {key(3)} and np.array_equal(got[key(3)], vec(3))
        deadline = time.monotonic() + 10
        while sum(inner.puts) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sum(inner.puts) == 20 and len(inner.puts) <= 2  # not one write per request
        assert np.array_equal(cache.get_many([key(7)])[key(7)], vec(7))  # now from inner
    finally:
        cache.close()


def test_write_behind_close_writes_what_is_pending_then_closes_the_inner() -> None:
    inner = RecordingCache()
    cache = WriteBehindCache(inner, delay=30)  # the flusher would wait far longer
    cache.put_many({key(i): vec(i) for i in range(5)})
    assert inner.items == {}
    started = time.monotonic()
    cache.close()
    assert time.monotonic() - started < 5  # close does not wait out the delay
    assert set(inner.items) == {key(i) for i in range(5)} and inner.closed
    cache.put_many({key(9): vec(9)})  # after close: written through
    assert key(9) in inner.items


def test_write_behind_writes_through_when_too_much_is_pending() -> None:
    inner = RecordingCache()
    cache = WriteBehindCache(inner, delay=30, max_pending=10)
    try:
        cache.put_many({key(i): vec(i) for i in range(8)})  # pending
        cache.put_many({key(i): vec(i) for i in range(8, 20)})  # over the bound: now
        assert inner.puts == [12] and len(inner.items) == 12
    finally:
        cache.close()
    assert len(inner.items) == 20


def test_write_behind_survives_a_failing_cache(caplog: pytest.LogCaptureFixture) -> None:
    inner = RecordingCache(fail=True)
    cache = WriteBehindCache(inner, delay=0.01)
    try:
        with caplog.at_level(logging.ERROR, logger=LOGGER):
            cache.put_many({key(1): vec(1)})
            deadline = time.monotonic() + 10
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.01)
        # the records, not caplog.text: the flusher's thread appends a record before it
        # writes its text, and this thread may read in between
        assert any("could not store 1 vectors" in r.getMessage() for r in caplog.records)
        inner.fail = False
        cache.put_many({key(2): vec(2)})  # the flusher lives on
        deadline = time.monotonic() + 10
        while key(2) not in inner.items and time.monotonic() < deadline:
            time.sleep(0.01)
        assert key(2) in inner.items
    finally:
        cache.close()


@pytest.mark.parametrize("kw", [{"delay": 0}, {"delay": -1}, {"max_pending": 0}])
def test_write_behind_bad_settings_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        WriteBehindCache(RecordingCache(), **kw)  # type: ignore[arg-type]


# -- Redis --------------------------------------------------------------------------------------

@pytest.mark.redis
def test_redis_round_trip_is_exact_little_endian_float32(
        make_redis: Callable[..., RedisEmbeddingCache], rdb: redis.Redis) -> None:
    meter = CacheMeter()
    cache = make_redis(meter=meter)
    items = {key(i): vec(i) for i in range(50)}
    items[key(50)] = np.array([0.0, -0.0, 1e-45, -3.4028235e38, np.pi], dtype=np.float32)
    cache.put_many(items)
    raw = rdb.get(f"semsearch:emb:{key(0)}")
    assert raw == items[key(0)].astype("<f4").tobytes()
    assert len(raw) == DIM * 4
    got = cache.get_many([*items, key(99)])
    assert all(np.array_equal(got[k], v) for k, v in items.items())
    assert np.signbit(got[key(50)][1])
    assert (meter.hits, meter.misses, meter.errors, meter.corrupt) == (51, 1, 0, 0)


@pytest.mark.redis
def test_redis_get_many_is_one_round_trip(
        make_redis: Callable[..., RedisEmbeddingCache]) -> None:
    client = CountingRedis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    cache = make_redis(client=client)
    items = {key(i): vec(i) for i in range(500)}
    cache.put_many(items)
    assert client.pipelines == [500]  # put_many: one pipeline of 500 SETs
    assert client.commands == []
    got = cache.get_many([*items, *(key(i) for i in range(1000, 1300)), key(1)])
    assert len(got) == 500
    assert client.commands == ["MGET"]
    cache.get_many([key(1)])
    assert client.commands == ["MGET", "MGET"]
    cache.get_many([])  # nothing to ask: no round trip at all
    assert client.commands == ["MGET", "MGET"]
    client.close()


@pytest.mark.redis
def test_redis_one_round_trip_on_the_server(private_redis: RedisServer) -> None:
    # Independent of the client library: the server's own command counters, on a private
    # server so no one else's commands are counted.
    admin = redis.Redis.from_url(private_redis.url)
    cache = RedisEmbeddingCache(private_redis.url)
    try:
        cache.get_many([key(0)])  # connect (HELLO, CLIENT SETINFO, ...) outside the count
        admin.config_resetstat()
        cache.put_many({key(i): vec(i) for i in range(256)})
        cache.get_many([key(i) for i in range(300)])
        stats = {name: s["calls"] for name, s in admin.info("commandstats").items()}
        stats.pop("cmdstat_config|resetstat", None)
        stats.pop("cmdstat_info", None)
        assert stats == {"cmdstat_set": 256, "cmdstat_mget": 1}
    finally:
        cache.close()
        admin.close()


@pytest.mark.redis
def test_redis_ttl_is_applied(make_redis: Callable[..., RedisEmbeddingCache],
                              rdb: redis.Redis) -> None:
    cache = make_redis(ttl_seconds=120)
    cache.put_many({key(1): vec(1), key(2): vec(2)})
    for k in (key(1), key(2)):
        ttl = rdb.ttl(f"semsearch:emb:{k}")
        assert 0 < ttl <= 120
    forever = make_redis(namespace="forever")
    forever.put_many({key(1): vec(1)})
    assert rdb.ttl(f"forever:emb:{key(1)}") == -1  # no expiry without ttl_seconds


def test_redis_ttl_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RedisEmbeddingCache(REDIS_URL, ttl_seconds=0)


@pytest.mark.redis
def test_redis_namespaces_isolate(make_redis: Callable[..., RedisEmbeddingCache],
                                  rdb: redis.Redis) -> None:
    a = make_redis(namespace="alpha")
    b = make_redis(namespace="beta")
    a.put_many({key(1): vec(1)})
    b.put_many({key(1): vec(2), key(2): vec(3)})
    assert np.array_equal(a.get_many([key(1)])[key(1)], vec(1))
    assert np.array_equal(b.get_many([key(1)])[key(1)], vec(2))
    assert a.get_many([key(2)]) == {}
    assert sorted(k.decode() if isinstance(k, bytes) else k for k in rdb.keys("*")) == sorted(
        [f"alpha:emb:{key(1)}", f"beta:emb:{key(1)}", f"beta:emb:{key(2)}"])


@pytest.mark.redis
def test_redis_corrupt_values_are_misses_and_get_overwritten(
        make_redis: Callable[..., RedisEmbeddingCache], rdb: redis.Redis) -> None:
    meter = CacheMeter()
    cache = make_redis(meter=meter)
    bad_nan = vec(1).copy()
    bad_nan[7] = np.nan
    bad_inf = vec(2).copy()
    bad_inf[0] = np.inf
    garbage = {key(1): b"\x01\x02\x03\x04\x05", key(2): bad_nan.tobytes(),
               key(3): bad_inf.tobytes(), key(4): b"", key(5): b"\x00" * 7}
    for k, raw in garbage.items():
        rdb.set(f"semsearch:emb:{k}", raw)
    rdb.rpush(f"semsearch:emb:{key(6)}", b"not a string")  # wrong type: MGET says nil
    cache.put_many({key(0): vec(0)})
    keys = [key(i) for i in range(7)]
    got = cache.get_many(keys)
    assert list(got) == [key(0)]
    assert (meter.hits, meter.misses, meter.corrupt, meter.errors) == (1, 6, 5, 0)
    # The caller re-embeds the misses and writes them back: overwritten, served from now on.
    cache.put_many({k: vec(100 + i) for i, k in enumerate(keys[1:])})
    got = cache.get_many(keys)
    assert len(got) == 7
    assert all(np.array_equal(got[k], vec(100 + i)) for i, k in enumerate(keys[1:]))
    assert meter.corrupt == 5


@pytest.mark.redis
def test_redis_does_not_store_non_finite_vectors(
        make_redis: Callable[..., RedisEmbeddingCache], rdb: redis.Redis) -> None:
    cache = make_redis()
    bad = vec(1).copy()
    bad[3] = np.nan
    cache.put_many({key(1): bad, key(2): np.zeros(0, np.float32), key(3): vec(3)})
    assert rdb.exists(f"semsearch:emb:{key(1)}", f"semsearch:emb:{key(2)}") == 0
    assert list(cache.get_many([key(1), key(2), key(3)])) == [key(3)]


def test_redis_degrades_on_a_dead_port(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock, meter = FakeClock(), CacheMeter()
    url = dead_url()
    cache = RedisEmbeddingCache(url, meter=meter, clock=clock, retry_interval=5.0)
    started = time.perf_counter()
    for i in range(50):
        assert cache.get_many([key(i), key(i + 1)]) == {}
        cache.put_many({key(i): vec(i)})  # dropped, no exception
    assert time.perf_counter() - started < 2.0
    assert cache.degraded
    (warning,) = warnings_of(caplog)
    assert url in warning.getMessage()
    assert "ConnectionError" in warning.getMessage()
    # Only the first call touched the network: one error; every lookup is a miss.
    assert (meter.errors, meter.hits, meter.misses, meter.corrupt) == (1, 0, 100, 0)
    # After retry_interval it tries again, fails again: counted, still one warning.
    clock.advance(5.0)
    assert cache.get_many([key(1)]) == {}
    cache.put_many({key(1): vec(1)})
    assert meter.errors == 2
    assert len(warnings_of(caplog)) == 1
    cache.close()


@pytest.mark.redis
def test_redis_degraded_calls_do_not_touch_the_network(
        make_redis: Callable[..., RedisEmbeddingCache]) -> None:
    clock = FakeClock()
    client = SwitchableClient(redis.Redis.from_url(dead_url(), retry=no_client_retries()))
    cache = make_redis(client=client, clock=clock, retry_interval=5.0)
    cache.get_many([key(1)])
    assert client.calls == 1
    for i in range(20):
        cache.get_many([key(i)])
        cache.put_many({key(i): vec(i)})
    clock.advance(4.9)
    cache.get_many([key(1)])
    assert client.calls == 1
    clock.advance(0.1)
    cache.get_many([key(1)])
    assert client.calls == 2


def test_redis_warning_redacts_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    port = free_port()
    cache = RedisEmbeddingCache(f"redis://user:s3cret@127.0.0.1:{port}/0")
    cache.get_many([key(1)])
    (warning,) = warnings_of(caplog)
    assert "s3cret" not in warning.getMessage()
    assert f"redis://user:***@127.0.0.1:{port}/0" in warning.getMessage()
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.redis
def test_redis_recovers_when_the_server_comes_back(
        make_redis: Callable[..., RedisEmbeddingCache], rdb: redis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, meter = FakeClock(), CacheMeter()
    dead = redis.Redis.from_url(dead_url(), retry=no_client_retries())
    live = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB)
    client = SwitchableClient(dead)
    cache = make_redis(client=client, clock=clock, retry_interval=5.0, meter=meter)
    assert cache.get_many([key(1)]) == {}
    cache.put_many({key(1): vec(1)})
    assert len(warnings_of(caplog)) == 1
    assert infos_of(caplog) == []

    client.target = live  # the server is back, but the cache does not look yet
    assert cache.get_many([key(1)]) == {}
    assert client.calls == 1
    clock.advance(5.0)
    cache.put_many({key(1): vec(1), key(2): vec(2)})
    got = cache.get_many([key(1), key(2)])
    assert sorted(got) == [key(1), key(2)]
    assert np.array_equal(got[key(2)], vec(2))
    assert not cache.degraded
    (recovered,) = infos_of(caplog)
    assert "recovered" in recovered.getMessage()
    assert meter.errors == 1

    # The warning is re-armed: a second outage warns again, once.
    client.target = dead
    clock.advance(100)
    for i in range(10):
        assert cache.get_many([key(i)]) == {}
    assert len(warnings_of(caplog)) == 2
    assert meter.errors == 2
    dead.close()
    live.close()


@pytest.mark.redis
def test_redis_real_outage_degrades_then_recovers(
        private_redis: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock, meter = FakeClock(), CacheMeter()
    cache = RedisEmbeddingCache(private_redis.url, clock=clock, retry_interval=5.0,
                                meter=meter, socket_timeout=0.5)
    try:
        before = {key(i): vec(i) for i in range(100)}
        cache.put_many(before)
        assert len(cache.get_many(list(before))) == 100

        private_redis.stop()  # mid-run: the pooled connection is now dead
        started = time.perf_counter()
        for i in range(30):
            assert cache.get_many([key(i), key(500 + i)]) == {}
            cache.put_many({key(500 + i): vec(500 + i)})
        assert time.perf_counter() - started < 3.0
        assert len(warnings_of(caplog)) == 1
        assert meter.errors == 1
        assert private_redis.url in warnings_of(caplog)[0].getMessage()

        clock.advance(5.0)  # still down: one more error, no second warning
        assert cache.get_many([key(1)]) == {}
        assert meter.errors == 2
        assert len(warnings_of(caplog)) == 1

        private_redis.start()  # same port, empty (no persistence)
        assert cache.get_many([key(1)]) == {}  # inside retry_interval: not even asked
        assert meter.errors == 2
        clock.advance(5.0)
        after = {key(1000 + i): vec(1000 + i) for i in range(100)}
        cache.put_many(after)
        got = cache.get_many(list(after))
        assert len(got) == 100
        assert all(np.array_equal(got[k], v) for k, v in after.items())
        assert any("recovered" in r.getMessage() for r in infos_of(caplog))
        assert len(warnings_of(caplog)) == 1
        assert meter.errors == 2
        assert not cache.degraded
    finally:
        cache.close()


@pytest.mark.redis
def test_redis_close_keeps_an_injected_client(rdb: redis.Redis) -> None:
    cache = RedisEmbeddingCache(REDIS_URL, client=rdb)
    cache.put_many({key(1): vec(1)})
    cache.close()
    assert rdb.exists(f"semsearch:emb:{key(1)}") == 1  # rdb still usable


def test_redis_missing_package_is_a_backend_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # makes `import redis` raise ImportError
    with pytest.raises(BackendError, match="pip install redis"):
        RedisEmbeddingCache(REDIS_URL)


def test_redis_module_does_not_import_redis() -> None:
    code = ("import sys; import semsearch.adapters.caches.redis_cache, "
            "semsearch.adapters.caches.lru; assert 'redis' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- LRU ----------------------------------------------------------------------------------------

def test_lru_serves_hits_without_touching_inner() -> None:
    inner, meter = DictCache(), CacheMeter()
    lru = LruEmbeddingCache(inner, max_items=100, meter=meter)
    lru.put_many({key(i): vec(i) for i in range(10)})
    assert inner.puts == [[key(i) for i in range(10)]]  # written through
    got = lru.get_many([key(i) for i in range(10)])
    assert len(got) == 10
    assert inner.gets == []
    assert (meter.hits, meter.misses) == (10, 0)


def test_lru_asks_inner_once_for_the_rest_and_remembers() -> None:
    inner, meter = DictCache(), CacheMeter()
    inner.data = {key(i): vec(i) for i in range(20)}
    lru = LruEmbeddingCache(inner, max_items=100, meter=meter)
    lru.put_many({key(0): vec(0)})
    got = lru.get_many([key(0), key(1), key(2), key(2), key(99)])
    assert sorted(got) == sorted([key(0), key(1), key(2)])
    assert inner.gets == [[key(1), key(2), key(99)]]
    assert (meter.hits, meter.misses) == (1, 3)
    lru.get_many([key(1), key(2)])  # remembered
    assert len(inner.gets) == 1
    lru.get_many([key(99)])  # misses are not remembered
    assert inner.gets[-1] == [key(99)]


def test_lru_evicts_least_recently_used() -> None:
    inner = DictCache()
    lru = LruEmbeddingCache(inner, max_items=3)
    lru.put_many({key(1): vec(1), key(2): vec(2), key(3): vec(3)})
    lru.get_many([key(1)])  # 1 is now the most recent; 2 the least
    lru.put_many({key(4): vec(4)})
    assert len(lru) == 3
    inner.gets.clear()
    lru.get_many([key(1), key(3), key(4)])
    assert inner.gets == []
    # Recency is now 1, 3, 4 (oldest first). 2 was evicted: fetched from inner, and
    # remembering it evicts 1.
    lru.get_many([key(2)])
    assert inner.gets == [[key(2)]]
    inner.gets.clear()
    lru.get_many([key(3), key(4), key(2)])
    assert inner.gets == []
    lru.get_many([key(1)])
    assert inner.gets == [[key(1)]]


def test_lru_pass_through_when_max_items_is_zero() -> None:
    inner = DictCache()
    lru = LruEmbeddingCache(inner, max_items=0)
    lru.put_many({key(1): vec(1)})
    for _ in range(3):
        assert np.array_equal(lru.get_many([key(1), key(1)])[key(1)], vec(1))
    assert inner.gets == [[key(1)]] * 3
    assert len(lru) == 0


def test_lru_put_overwrites_and_close_closes_inner() -> None:
    inner = DictCache()
    lru = LruEmbeddingCache(inner, max_items=10)
    lru.put_many({key(1): vec(1)})
    lru.put_many({key(1): vec(2)})
    assert np.array_equal(lru.get_many([key(1)])[key(1)], vec(2))
    held = lru.get_many([key(1)])[key(1)]
    with pytest.raises(ValueError):
        held[0] = 1.0  # read-only: callers cannot corrupt what the LRU serves
    lru.close()
    assert inner.closed
    assert len(lru) == 0


def test_lru_thread_safety_smoke() -> None:
    inner = DictCache()
    lru = LruEmbeddingCache(inner, max_items=64)
    vectors = {key(i): vec(i, dim=16) for i in range(300)}
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            for _ in range(400):
                ks = rnd.sample(list(vectors), 12)
                if rnd.random() < 0.4:
                    lru.put_many({k: vectors[k] for k in ks})
                else:
                    for k, v in lru.get_many(ks).items():
                        assert np.array_equal(v, vectors[k])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(lru) <= 64
    got = lru.get_many(list(vectors))
    assert all(np.array_equal(got[k], vectors[k]) for k in got)
    assert set(got) == set(inner.data)


# -- SQLite on a full disk ------------------------------------------------------------------


def test_sqlite_write_failures_are_one_warning_never_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cache speeds searches and ingest up; a disk too full to store a vector must not
    fail them. The warning names the file and the cause, once per outage."""
    cache = SqliteEmbeddingCache(tmp_path / "cache.db", retry_interval=0.3)
    cache.put_many({key(0): vec(0)})
    conn = cache._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # SQLite's own SQLITE_FULL
    big = {key(i): vec(i) for i in range(1, 200)}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cache.put_many(big)
        cache.put_many(big)  # not even tried: within retry_interval of the failure
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"the embedding cache {tmp_path / 'cache.db'}: database or disk is full" in \
        warnings[0]
    assert set(cache.get_many([key(0), key(1)])) == {key(0)}  # reads go on; nothing half-in
    time.sleep(0.35)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        cache.put_many(big)  # reopened (without the page limit) and stored
    assert "stores vectors again" in caplog.text
    assert len(cache.get_many(list(big))) == len(big)
    cache.close()


def test_sqlite_on_a_full_disk_serves_hits_and_resumes_storing_when_space_is_freed(
        tmp_path: Path) -> None:
    if reason := full_disk.unavailable(tmp_path):
        pytest.skip(f"no private tmpfs to fill: {reason}")
    code = f"""
import logging
import numpy as np
from semsearch.adapters.caches.sqlite import NullEmbeddingCache, SqliteEmbeddingCache
from semsearch.adapters.caches.write_behind import WriteBehindCache
warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("{LOGGER}").addHandler(handler)
v = {{k: np.full(4, float(i), dtype=np.float32) for i, k in enumerate(["a", "b", "c"])}}
first = SqliteEmbeddingCache(mnt / "cache.db")
first.put_many({{"a": v["a"]}})
first.close()
fill()
cache = SqliteEmbeddingCache(mnt / "cache.db", retry_interval=0)
result["hit"] = sorted(cache.get_many(["a", "b"]))
cache.put_many({{"b": v["b"]}})
cache.put_many({{"c": v["c"]}})
result["dropped"] = sorted(cache.get_many(["b", "c"]))
empty = SqliteEmbeddingCache(mnt / "missing.db")  # cannot even be created: no cache
empty.put_many({{"a": v["a"]}})
result["empty"] = [len(empty), sorted(empty.get_many(["a"]))]
result["warnings"] = list(warnings)
free()
cache.put_many({{"b": v["b"]}})
result["stored"] = sorted(cache.get_many(["a", "b"]))
"""
    (out,) = full_disk.run(tmp_path / "mnt", [{"py": code}], size="1m")
    assert "error" not in out, out["error"]
    r = out["result"]
    assert r["hit"] == ["a"]
    assert r["dropped"] == []
    assert r["empty"] == [0, []]
    mine = [w for w in r["warnings"] if "cache.db" in w]
    assert len(mine) == 1, r["warnings"]
    assert f"the embedding cache {tmp_path / 'mnt' / 'cache.db'}: " in mine[0]
    assert "full" in mine[0]
    assert r["stored"] == ["a", "b"]

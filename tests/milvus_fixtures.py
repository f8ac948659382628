"""Pytest fixtures for a real Milvus: one server per test session, a wiped one per test.

Outside a private network namespace (or without the ``milvus`` package) they skip: see
tests/milvus_server.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.milvus_server import MilvusServer, milvus_server_or_skip


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    server = milvus_server_or_skip(tmp_path_factory.mktemp("milvus"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def milvus_uri(milvus_server: MilvusServer) -> Iterator[str]:
    """The server's uri, with no collection, alias or extra database left by earlier tests
    (a test that killed the server gets it started again)."""
    milvus_server.start()
    milvus_server.wipe()
    yield milvus_server.uri

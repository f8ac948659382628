"""The Milvus test harness itself (tests/milvus_server.py): a real server that answers, sees
its own writes, survives a SIGKILL with its data, stops in bounded time, and is never started
where it would listen beyond this machine."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.milvus_server import SKIP_NOT_PRIVATE, MilvusServer, private_network

pytestmark = pytest.mark.milvus

REPO = Path(__file__).resolve().parents[2]
DIM = 4


@pytest.fixture
def client(milvus_uri: str) -> Iterator[object]:
    from pymilvus import MilvusClient

    milvus = MilvusClient(uri=milvus_uri)
    try:
        yield milvus
    finally:
        milvus.close()


def _create_with_rows(uri: str, name: str, ids: list[int]) -> None:
    from pymilvus import MilvusClient

    milvus = MilvusClient(uri=uri)
    try:
        milvus.create_collection(name, dimension=DIM, consistency_level="Strong")
        milvus.insert(name, [{"id": i, "vector": [float(i)] * DIM} for i in ids])
    finally:
        milvus.close()


def _ids(uri: str, name: str) -> list[int]:
    from pymilvus import MilvusClient

    milvus = MilvusClient(uri=uri)
    try:
        milvus.load_collection(name)
        rows = milvus.query(
            name, filter="id >= 0", output_fields=["id"], consistency_level="Strong"
        )
        return sorted(int(row["id"]) for row in rows)
    finally:
        milvus.close()


def test_server_answers_with_its_version(milvus_server: MilvusServer) -> None:
    assert private_network()
    assert milvus_server.uri.startswith("http://127.0.0.1:")
    assert milvus_server.server_version().startswith("v2.3.5")


def test_strong_consistency_sees_an_insert_at_once(milvus_uri: str) -> None:
    _create_with_rows(milvus_uri, "seen", [1, 2, 3])
    assert _ids(milvus_uri, "seen") == [1, 2, 3]


def test_each_test_starts_without_collections_aliases_or_databases(client: object) -> None:
    from pymilvus import MilvusClient

    assert isinstance(client, MilvusClient)
    assert client.list_collections() == []
    assert client.list_databases() == ["default"]
    client.create_collection("left", dimension=DIM)
    client.create_alias("left", "left_alias")
    client.create_database("other")


def test_wipe_drops_everything(milvus_server: MilvusServer, client: object) -> None:
    from pymilvus import MilvusClient

    assert isinstance(client, MilvusClient)
    client.create_collection("one", dimension=DIM)
    client.create_alias("one", "one_alias")
    client.create_database("second")
    client.using_database("second")
    client.create_collection("two", dimension=DIM)
    client.create_alias("two", "two_alias")
    client.using_database("default")
    milvus_server.wipe()
    assert client.list_collections() == []
    assert client.list_databases() == ["default"]
    assert not client.has_collection("one_alias")


def test_data_survives_a_kill_and_restart(milvus_server: MilvusServer, milvus_uri: str) -> None:
    _create_with_rows(milvus_uri, "durable", [7, 8])
    old_pid = milvus_server.pid
    milvus_server.kill()
    assert not milvus_server.running
    milvus_server.start()
    assert milvus_server.pid != old_pid
    assert _ids(milvus_server.uri, "durable") == [7, 8]


@pytest.mark.slow  # every session's teardown stops the server the same way
def test_stop_is_bounded_and_start_comes_back(milvus_server: MilvusServer, milvus_uri: str) -> None:
    _create_with_rows(milvus_uri, "loaded", [1])
    assert _ids(milvus_uri, "loaded") == [1]  # loaded: stop has to release it
    began = time.monotonic()
    milvus_server.stop()
    assert time.monotonic() - began < 30
    assert not milvus_server.running
    milvus_server.start()
    assert _ids(milvus_server.uri, "loaded") == [1]


def test_outside_a_private_namespace_the_fixture_skips(tmp_path: Path) -> None:
    """Outside a namespace, a child process sees the host's interfaces and must skip; inside
    one (where leaving is impossible), the child is shown a host-like interface list."""
    probe = (
        "import pytest\n"
        "from pathlib import Path\n"
        "from tests.milvus_server import milvus_server_or_skip\n"
        "try:\n"
        f"    milvus_server_or_skip(Path({str(tmp_path)!r}))\n"
        "except pytest.skip.Exception as skipped:\n"
        "    print('SKIP', skipped.msg)\n"
        "else:\n"
        "    print('STARTED')\n"
    )
    if private_network():
        probe = "import socket\nsocket.if_nameindex = lambda: [(1, 'lo'), (2, 'eth0')]\n" + probe
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.strip() == f"SKIP {SKIP_NOT_PRIVATE}", done.stderr

"""A real uvicorn server on a loopback port per test module, built by the app factory."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from semsearch.api.app import create_app
from semsearch.config import Settings


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


def make_home(root: Path, models_dir: Path) -> Path:
    """A fresh home; the built model comes from the session's cache (``models_dir``, which
    SEMSEARCH_MODEL_CACHE_DIR names for the whole session), never from the home."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="module")
def live_factory(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
                 request: pytest.FixtureRequest) -> Iterator[Callable[..., LiveServer]]:
    from tests.conftest import ON_POSTGRES

    servers: list[LiveServer] = []
    databases: list[str] = []
    pg = request.getfixturevalue("postgres_server") if ON_POSTGRES else None

    def start(**settings: Any) -> LiveServer:
        home = make_home(tmp_path_factory.mktemp("api"), models_dir)
        if pg is not None and "store_url" not in settings:
            name, url = pg.new_database()  # the PostgreSQL run: each server its own database
            databases.append(name)
            settings["store_url"] = url
        srv = LiveServer(Settings(home=home, embedder_threads=2, **settings)).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()
    for name in databases:
        pg.drop_database(name)


@pytest.fixture(scope="module")
def live(live_factory: Callable[..., LiveServer]) -> LiveServer:
    return live_factory()

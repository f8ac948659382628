"""``semsearch consume``'s arguments: the schema it prints is the shipped one, and every
wrong invocation is one line on stderr with exit code 2, never a traceback (the broker
itself is exercised in tests/e2e/test_consume.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from semsearch.config import Settings
from semsearch.core.events import schema
from tests.cli.test_cli import run
from tests.default_path import modules_loaded_by_default


def test_schema_is_the_shipped_one(settings: Settings) -> None:
    out = run(settings, "consume", "--schema")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == schema()


@pytest.mark.parametrize(("args", "message"), [
    ((), "give --from URL and --collection NAME"),
    (("--from", "redis://127.0.0.1:6379/0"), "give --from URL and --collection NAME"),
    (("--from", "http://127.0.0.1:1/x", "-c", "docs"), "must be a broker URL"),
    (("--from", "amqp://guest:secret@127.0.0.1:5672/%2f", "-c", "docs"), "needs --queue"),
    (("--from", "nats://127.0.0.1:4222", "-c", "docs"), "needs --stream"),
    (("--from", "redis://127.0.0.1:6379/0", "--stream", "s", "-c", "bad name"),
     "collection name"),
    (("--from", "redis://127.0.0.1:6379/0", "--stream", "s", "-c", "docs", "--batch-size",
      "0"), "--batch-size"),
], ids=["nothing", "no-collection", "scheme", "amqp-queue", "nats-stream", "name", "batch"])
def test_wrong_invocations_are_one_clear_line(settings: Settings, args: tuple[str, ...],
                                              message: str) -> None:
    out = run(settings, "consume", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr
    assert "secret" not in out.stderr


def test_the_default_path_never_imports_a_broker_client(tmp_path: Path) -> None:
    """The engine, the API and the CLI (consume included) load no broker client until a
    broker URL is given: pika and nats-py are optional extras."""
    picked = "m.split('.')[0] in ('pika', 'nats')"
    assert modules_loaded_by_default(tmp_path, picked) == "[]"
    code = f"import sys, semsearch.cli.main; print(sorted(m for m in sys.modules if {picked}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr

"""``semsearch adapt`` as a user runs it: train, gate, swap; a later process serves the
adapted queries; a failing gate exits 1 and keeps the old version; rollback; bad input exits
with a one-line error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from semsearch.config import Settings
from tests.cli.test_cli import run
from tests.services.adapt_data import TOPICS, acronym, write_beir

FAST = ("--max-steps", "150", "--learning-rate", "0.02", "--l2", "0.001")


def _dense_top(settings: Settings, query: str) -> str:
    out = run(settings, "search", query, "-c", "acr", "--mode", "dense", "--json", "--k", "1")
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["hits"][0]["doc_id"])


@pytest.mark.slow  # ten CLI processes
def test_adapt_swap_search_fail_gate_and_rollback(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER", "fake")
    data = write_beir(tmp_path)
    assert run(settings, "index", str(data), "-c", "acr").returncode == 0

    out = run(settings, "adapt", "-c", "acr", "--train", str(data), *FAST, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["swapped"] and report["reindex"]["version"] == "acr@v2"
    assert report["reindex"]["build"]["embedded"] == 0
    assert report["reindex"]["gate"]["modes"]["dense"]["delta"] > 0.3
    assert "+adapter:" + report["fingerprint"] in report["identity"]["revision"]
    right = sum(_dense_top(settings, f"what about {acronym(t)} today") == f"doc{t}"
                for t in range(0, TOPICS, 4))
    assert right >= 5  # of 6: a new process serves the adapter from the store

    human = run(settings, "adapt", "-c", "acr", "--train", str(data), *FAST,
                "--tolerance", "-1")
    assert human.returncode == 1, human.stderr  # the gate kept acr@v2
    assert "held-out nDCG@10" in human.stdout and "gate failed" in human.stdout
    assert "dense" in human.stdout and "acr@v3 is kept for inspection" in human.stdout

    back = run(settings, "rollback", "-c", "acr")
    assert back.returncode == 0 and "now serves acr (was acr@v2" in back.stdout


def test_adapt_bad_input_exits_with_a_message(
        settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEARCH_EMBEDDER", "fake")
    data = write_beir(tmp_path)
    assert run(settings, "index", str(data), "-c", "acr").returncode == 0
    cases = [
        (("-c", "nope", "--train", str(data)), "unknown collection 'nope'"),
        (("-c", "acr", "--train", str(data), "--gate-split", "train"),
         "is the training split"),
        (("-c", "acr", "--train", str(data), "--split", "dev"), "no training split 'dev'"),
    ]
    if importlib.util.find_spec("torch") is None:
        cases.append((("-c", "acr", "--train", str(data), "--method", "finetune"),
                      "pip install torch==2.13.0 sentence-transformers"))
    for args, message in cases:
        out = run(settings, "adapt", *args)
        assert out.returncode == 2, (args, out.stderr)
        assert message in out.stderr and "Traceback" not in out.stderr
    missing = run(settings, "adapt", "-c", "acr", "--train", str(tmp_path / "absent"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr

"""``semsearch tune`` as a user runs it: tune on a labelled folder, show the history, search
with the stored defaults, revert; bad input exits non-zero with a message, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

from semsearch.config import Settings
from tests.cli.test_cli import run
from tests.tune_corpus import write_corpus


def test_tune_show_search_and_revert(settings: Settings, tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "codes")
    assert run(settings, "index", str(folder), "-c", "codes").returncode == 0

    out = run(settings, "tune", "-c", "codes", "--train", str(folder))
    assert out.returncode == 0, out.stderr
    assert "tuning 'codes'" in out.stderr and "nDCG@10" in out.stderr  # progress
    assert "current defaults: nDCG@10" in out.stdout and "best:" in out.stdout
    assert "stored as revision 1" in out.stdout

    shown = json.loads(run(settings, "tune", "-c", "codes", "--show", "--json").stdout)
    assert shown["current"]["revision"] == 1 and len(shown["history"]) == 1
    assert shown["history"][0]["live"] and shown["history"][0]["note"]["by"] == "tune"
    text = run(settings, "tune", "-c", "codes", "--show").stdout
    assert "revision 1 defaults in force" in text and "[live]" in text

    out = run(settings, "search", "ZK4434 procedure", "-c", "codes", "--json", "-k", "1")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hits"][0]["doc_id"] == "proc-2"

    out = run(settings, "tune", "-c", "codes", "--revert")
    assert out.returncode == 0, out.stderr
    assert "reverted revision 1" in out.stdout and "built-in defaults" in out.stdout
    shown = json.loads(run(settings, "tune", "-c", "codes", "--show", "--json").stdout)
    assert shown["current"]["revision"] == 0 and shown["history"][0]["reverted_at"]


def test_tune_json_dry_run(settings: Settings, tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "codes")
    assert run(settings, "index", str(folder), "-c", "codes").returncode == 0
    out = run(settings, "tune", "-c", "codes", "--train", str(folder), "--json", "--dry-run",
              "--max-queries", "4", "--passes", "1")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["queries"] == 4 and report["stored_revision"] is None
    assert report["best"]["ndcg@10"] >= report["baseline"]["ndcg@10"]
    assert report["trials"] and report["measure"] == "ndcg@10"
    shown = json.loads(run(settings, "tune", "-c", "codes", "--show", "--json").stdout)
    assert shown["history"] == []


def test_bad_input_exits_with_a_message(settings: Settings, tmp_path: Path) -> None:
    folder = write_corpus(tmp_path / "codes")
    test_only = write_corpus(tmp_path / "test-only", splits=("test",))
    assert run(settings, "index", str(folder), "-c", "codes").returncode == 0
    cases = [
        (["-c", "codes"], "exactly one of --train FOLDER, --show or --revert"),
        (["-c", "codes", "--show", "--revert"], "exactly one of"),
        (["-c", "nope", "--train", str(folder)], "unknown collection 'nope'"),
        (["-c", "nope", "--show"], "unknown collection 'nope'"),
        (["-c", "codes", "--train", str(test_only)], "missing qrels file for split 'train'"),
        (["-c", "codes", "--train", str(folder), "--split", "dev"], "split 'dev'"),
        (["-c", "codes", "--train", str(tmp_path / "absent")], "not a folder"),
        (["-c", "codes", "--revert"], "no tuned search defaults to revert"),
        (["-c", "codes", "--train", str(folder), "--max-queries", "0"], "0"),
    ]
    for args, text in cases:
        out = run(settings, "tune", *args)
        assert out.returncode != 0, (args, out.stdout)
        assert text in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr, (args, out.stderr)

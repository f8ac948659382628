"""Odd input at the command line: one clear line, a non-zero exit, and nothing left behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from semsearch.config import Settings
from tests.cli.test_cli import run


def _collections(settings: Settings) -> list[str]:
    out = run(settings, "collections", "--json")
    assert out.returncode == 0, out.stderr
    return [c["name"] for c in json.loads(out.stdout)["collections"]]


@pytest.mark.parametrize("case,message", [
    ("missing", "no such file or directory"),
    ("empty-folder", "no .txt, .md, .html, .jsonl or .csv files found"),
    ("not-utf8", "not UTF-8"),
    ("csv-without-text", "the header has no a 'text' column; its columns are 'id', 'body'"),
    ("csv-without-id", "the header has no an id column"),
])
def test_a_failed_index_leaves_no_collection(settings: Settings, tmp_path: Path, case: str,
                                             message: str) -> None:
    src = tmp_path / case
    if case == "empty-folder":
        src.mkdir()
    elif case == "not-utf8":
        src.mkdir()
        (src / "a.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    elif case.startswith("csv"):
        src = tmp_path / "docs.csv"
        header = "id,body" if case == "csv-without-text" else "name,text"
        src.write_text(f"{header}\n1,first\n2,second\n3,third\n", encoding="utf-8")
    out = run(settings, "index", str(src), "-c", "fresh")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], \
        out.stderr  # one error, not one warning per row
    assert "fresh" not in _collections(settings)
    assert run(settings, "runs", "-c", "fresh", "--json").returncode == 0


def test_a_failed_index_into_an_existing_collection_keeps_it(settings: Settings,
                                                             tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text('{"_id": "a", "text": "anchors hold boats"}\n', encoding="utf-8")
    assert run(settings, "index", str(good), "-c", "kept").returncode == 0
    assert run(settings, "index", str(tmp_path / "missing"), "-c", "kept").returncode == 2
    assert "kept" in _collections(settings)


def test_repeated_ids_are_counted_and_the_last_copy_kept(settings: Settings,
                                                         tmp_path: Path) -> None:
    corpus = tmp_path / "dups.jsonl"
    rows = [("a", "first copy of a"), ("b", "only b"), ("a", "second copy of a"),
            ("c", "first c"), ("a", "third copy of a"), ("c", "last c")]
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in rows),
                      encoding="utf-8")
    # Batches of 2: repeats inside one batch and across batches are both counted.
    out = run(settings, "index", str(corpus), "-c", "dups", "--json", "--batch-size", "2")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["duplicates"] == 3 and report["duplicate_ids"] == ["a", "c"]
    assert "3 documents repeated an id seen earlier in this run" in out.stderr
    hits = json.loads(run(settings, "search", "copy", "-c", "dups", "--json", "-m",
                          "keyword").stdout)["hits"]
    assert [(h["doc_id"], h["text"]) for h in hits] == [("a", "third copy of a")]
    assert json.loads(run(settings, "collections", "--json").stdout)[
        "collections"][0]["documents"] == 3


@pytest.mark.parametrize("name", ["-c", "--x", ".hidden", "a b", "x" * 65, "ü/x"])
def test_collection_names_that_read_as_options_are_refused(settings: Settings,
                                                           tmp_path: Path, name: str) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "anchors hold boats"}\n', encoding="utf-8")
    # Progress on: a refused name must print its error alone, with no bar drawn before it.
    out = run(settings, "index", str(corpus), f"--collection={name}",
              SEMSEARCH_NO_PROGRESS="0")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: collection name {name!r} must be 1-64 letters, digits, '-', '_' or '.', "
        "starting with a letter or digit"]
    assert _collections(settings) == []


def test_filters_too_large_for_a_backend_get_a_clear_error(settings: Settings,
                                                          tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "anchors hold boats", "kind": "x"}\n',
                      encoding="utf-8")
    assert run(settings, "index", str(corpus), "-c", "f").returncode == 0
    many = json.dumps({f"k{i}": i for i in range(1001)})
    for mode in ("keyword", "dense", "hybrid"):
        out = run(settings, "search", "boats", "-c", "f", "-m", mode, "--filter", many)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert "more than 100 conditions" in out.stderr
    ok = run(settings, "search", "boats", "-c", "f", "--filter", "kind=x", "--json")
    assert [h["doc_id"] for h in json.loads(ok.stdout)["hits"]] == ["a"]


def test_small_keyword_scores_are_printed_as_numbers_not_zero(settings: Settings,
                                                              tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in
                              enumerate(["anchors hold boats", "sails catch wind",
                                         "boats need anchors and sails"])), encoding="utf-8")
    assert run(settings, "index", str(corpus), "-c", "s").returncode == 0
    out = run(settings, "search", "anchors", "-c", "s", "-m", "keyword")
    first = out.stdout.splitlines()[0]
    score = float(re.search(r"keyword #1 (\S+)\)", first)[1])  # type: ignore[index]
    assert score > 0 and "0.000" not in first, out.stdout


def test_index_help_says_which_fields_are_read(settings: Settings) -> None:
    out = run(settings, "index", "--help").stdout
    for field in ('"_id", "id" or "doc_id"', '"text"', '"title"', '"metadata"', ".csv"):
        assert field in out, out


def test_sync_refuses_a_bad_collection_name_and_reports_cache_outages(
        settings: Settings, tmp_path: Path) -> None:
    import socket

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("# Anchors\nAnchors hold boats in a storm.", encoding="utf-8")
    bad = run(settings, "sync", "--source", str(folder), "-c", "../outside")
    assert bad.returncode == 1 and "collection name '../outside' must be" in bad.stderr
    assert not (settings.home / "outside.lock").exists() and _collections(settings) == []
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = run(settings, "sync", "--source", str(folder), "-c", "docs",
              SEMSEARCH_CACHE_URL=f"redis://127.0.0.1:{port}/0")
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.splitlines()[-1])
    assert line["new"] == 1 and line["cache_errors"] >= 1


def test_text_that_is_not_valid_unicode_is_skipped_or_refused(settings: Settings,
                                                             tmp_path: Path) -> None:
    """JSON can carry an unpaired surrogate ("\\ud800"), a shell argument undecodable bytes:
    neither can be stored, so both are reasons, never tracebacks."""
    corpus = tmp_path / "s.jsonl"
    corpus.write_text('{"_id": "a\\ud800", "text": "x"}\n{"_id": "b", "text": "bad \\udc00"}\n'
                      '{"_id": "c", "text": "good text"}\n', encoding="utf-8")
    out = run(settings, "index", str(corpus), "-c", "u", "--json")
    assert out.returncode == 0, out.stderr
    assert (json.loads(out.stdout)["new"], json.loads(out.stdout)["skipped"]) == (1, 2)
    assert out.stderr.count("unpaired surrogate") == 2 and "Traceback" not in out.stderr
    strict = run(settings, "index", str(corpus), "-c", "u2", "--strict")
    assert strict.returncode == 2 and strict.stderr.count("\n") == 1
    for args in (["search", "x\udcff", "-c", "u"], ["delete", "x\udcff", "-c", "u"]):
        bad = run(settings, *args)
        assert bad.returncode == 2 and "unpaired surrogate" in bad.stderr, bad.stderr

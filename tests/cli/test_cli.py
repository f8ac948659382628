"""The real ``semsearch`` executable in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semsearch.config import Settings


def run(settings: Settings, *args: str,
        **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEMSEARCH_HOME": str(settings.home), "SEMSEARCH_NO_PROGRESS": "1",
           **extra_env}
    return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_quickstart_then_machine_readable_commands(settings: Settings) -> None:
    qs = run(settings, "quickstart")
    assert qs.returncode == 0, qs.stderr
    assert "storing-vegetables.md" in qs.stdout and "semsearch index" in qs.stdout
    for mode in ("hybrid", "dense", "keyword"):
        assert f"== {mode}:" in qs.stdout

    out = run(settings, "search", "wild yeast and sourdough", "-c", "quickstart", "--json",
              "--k", "3")
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)["hits"]
    assert len(hits) == 3 and hits[0]["doc_id"] == "sourdough-starter.md"
    assert {"doc_id", "chunk_id", "score", "components", "text", "metadata"} <= set(hits[0])
    assert set(hits[0]["components"]) == {"dense", "keyword"}

    cols = json.loads(run(settings, "collections", "--json").stdout)["collections"]
    (qc,) = cols
    assert qc["name"] == "quickstart" and qc["documents"] == 12 and qc["dimension"] == 384
    assert qc["identity"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert qc["bytes_on_disk"] > 0

    vec = json.loads(run(settings, "embed", "some text").stdout)
    assert len(vec) == 384 and abs(sum(v * v for v in vec) - 1) < 1e-3


@pytest.mark.embedded_only(reason="deletes the index files to rebuild them")
def test_index_json_summary_and_warm_rerun(settings: Settings, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Kites\n\nKites fly best in steady wind on open ground.\n")
    (docs / "b.txt").write_text("Lighthouses warn ships away from rocks at night.\n")
    (docs / "c.html").write_text("<html><head><title>Bees</title><style>p{}</style></head>"
                                 "<body><p>Bees make honey from nectar.</p></body></html>")
    first = run(settings, "index", str(docs), "-c", "mine", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["documents"] == 3 and report["chunks"] == 3 and report["embedded"] == 3
    assert {"cache_hits", "seconds"} <= set(report)
    again = json.loads(run(settings, "index", str(docs), "-c", "mine", "--json").stdout)
    assert again["embedded"] == 0 and again["unchanged"] == 3
    (st,) = json.loads(run(settings, "stats", "--json").stdout)["collections"]
    assert (st["collection"], st["runs"], st["items_embedded"]) == ("mine", 2, 3)
    assert st["tokens"] == report["tokens"] > 0 and st["provider_latency_ms"]["p50"] > 0
    assert "mine: 2 runs (0 failed)" in run(settings, "stats").stdout
    import shutil

    shutil.rmtree(settings.index_dir("mine"))
    rebuilt = json.loads(run(settings, "rebuild", "-c", "mine", "--json").stdout)
    assert rebuilt["chunks"] == 3 and rebuilt["embedded"] == 0 and rebuilt["cache_hits"] == 3
    hit = json.loads(run(settings, "search", "honey", "-c", "mine", "--json", "-m",
                         "keyword").stdout)["hits"][0]
    assert hit["doc_id"] == "c.html" and hit["title"] == "Bees"

    # Another model identity against this collection: refused in one line, nothing lost.
    other = run(settings, "search", "honey", "-c", "mine", SEMSEARCH_EMBEDDER_PRECISION="fp32")
    assert other.returncode == 2 and other.stderr.count("\n") == 1
    assert "int8" in other.stderr and "fp32" in other.stderr and "re-index" in other.stderr
    cols = json.loads(run(settings, "collections", "--json").stdout)["collections"]
    assert cols[0]["documents"] == 3


@pytest.mark.parametrize("setup,args,message", [
    (None, ["search", "x", "-c", "nope"], "unknown collection 'nope'"),
    (None, ["index", "/does/not/exist", "-c", "x"], "no such file or directory"),
    ("empty.jsonl", ["index", "{f}", "-c", "x"], "the file is empty"),
    ("bad.jsonl", ["index", "{f}", "-c", "x"], "bad.jsonl:2: not JSON"),
    ("latin1.txt", ["index", "{f}", "-c", "x"], "not UTF-8"),
    (None, ["search", "", "-c", "quickstart"], "query is empty"),
    (None, ["search", "x", "-c", "q", "--filter", "{oops"], "not valid JSON"),
    (None, ["eval", "{d}", "-c", "x", "--modes", "fuzzy"], "--modes"),
])
def test_bad_input_is_one_line_and_nonzero(settings: Settings, tmp_path: Path,
                                           setup: str | None, args: list[str],
                                           message: str) -> None:
    f = tmp_path / (setup or "unused")
    if setup == "bad.jsonl":
        f.write_text('{"_id": "1", "text": "ok"}\n{"_id": 2,\n')
    elif setup == "latin1.txt":
        f.write_bytes("caf\xe9 au lait".encode("latin-1"))
    elif setup == "empty.jsonl":
        f.write_text("")
    args = [a.replace("{f}", str(f)).replace("{d}", str(tmp_path)) for a in args]
    out = run(settings, *args)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert message in lines[0]


def test_invalid_records_are_skipped_and_reported(settings: Settings, tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"_id": "a", "text": "anchors hold boats"}\n'
                      '{"_id": "b", "text": "", "title": ""}\n'
                      '{"_id": "c", "text": "sails catch wind"}\n')
    out = run(settings, "index", str(corpus), "-c", "boats", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["documents"], report["new"], report["skipped"]) == (3, 2, 1)
    assert "warning: skipped: document 'b' has no text and no title" in out.stderr
    strict = run(settings, "index", str(corpus), "-c", "boats2", "--strict")
    assert strict.returncode == 2 and "error: document 'b' has no text" in strict.stderr


def test_models_lists_what_is_installed(settings: Settings) -> None:
    rows = json.loads(run(settings, "models", "--json").stdout)["models"]
    local = [r for r in rows if r["provider"] == "local"]
    assert {r["precision"] for r in local} == {"int8", "fp32"}
    assert all(r["installed"] and r["dimension"] == 384 for r in local)
    assert [r["precision"] for r in local if r["configured"]] == ["int8"]
    assert {r["provider"] for r in rows} >= {"openai-compatible", "sentence-transformers"}
    assert "* local: sentence-transformers/all-MiniLM-L6-v2 int8" in run(settings,
                                                                        "models").stdout


def test_help_is_fast_and_lists_commands(settings: Settings) -> None:
    out = run(settings, "--help")
    for cmd in ("index", "search", "embed", "eval", "collections", "quickstart"):
        assert cmd in out.stdout

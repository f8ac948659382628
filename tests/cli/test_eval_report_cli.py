"""``semsearch eval --report`` as a user runs it: the page is written, ``--compare`` adds a
version's before/after, ``--json`` keeps its shape, and a report that could not be written
is refused before the evaluation spends any time."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from semsearch.config import Settings
from tests.cli.test_cli import run
from tests.conftest import shared_embedding_cache
from tests.services.test_eval_report import scifact_slice


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return scifact_slice(tmp_path_factory.mktemp("data"), queries=10, distractors=4)


def _env() -> dict[str, str]:
    cache = shared_embedding_cache()
    return {"SEMSEARCH_CACHE_URL": cache} if cache else {}


def test_report_is_written_and_json_keeps_its_shape(settings: Settings, dataset: Path,
                                                    tmp_path: Path) -> None:
    assert run(settings, "index", str(dataset), "-c", "sf", **_env()).returncode == 0
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    out = run(settings, "eval", str(dataset), "-c", "sf", "--report", str(page), "--json",
              **_env())
    assert out.returncode == 0, out.stderr
    means = json.loads(out.stdout)
    assert set(means) == {"keyword", "dense", "hybrid"}  # the plain shape, unchanged
    html = page.read_text(encoding="utf-8")
    for mode, m in means.items():
        assert f"<tr data-mode='{mode}'>" in html
        assert f"<td data-measure='ndcg@10'>{m['ndcg@10']:.4f}</td>" in html
    assert "id='hybrid-vs-best'" in html and not re.search(r"https?://", html)
    assert f"report written to {page}" in out.stderr
    assert page.stat().st_mode & 0o044  # readable by others: it is meant to be shared
    assert [p.name for p in page.parent.iterdir()] == ["report.html"]  # no temporary left

    full = json.loads(run(settings, "eval", str(dataset), "-c", "sf", "--modes", "keyword",
                          "--json", "--per-query", **_env()).stdout)
    assert full["compare"] is None and len(full["evaluation"]["queries"]) == 10
    assert full["evaluation"]["modes"]["keyword"]["ndcg@10"] == pytest.approx(
        means["keyword"]["ndcg@10"], abs=1e-4)


def test_compare_with_the_first_version(settings: Settings, dataset: Path,
                                        tmp_path: Path) -> None:
    assert run(settings, "index", str(dataset), "-c", "sf", **_env()).returncode == 0
    assert run(settings, "reindex", "-c", "sf", **_env()).returncode == 0
    page = tmp_path / "cmp.html"
    out = run(settings, "eval", str(dataset), "-c", "sf", "--compare", "sf@v1",
              "--report", str(page), **_env())
    assert out.returncode == 0, out.stderr
    assert "against sf@v1 (sf), nDCG@10 before -> after:" in out.stdout
    assert re.search(r"^hybrid\s+\d\.\d{4} -> \d\.\d{4} \(\+0\.0000\)$", out.stdout, re.M)
    html = page.read_text(encoding="utf-8")
    assert "<dt>after</dt><dd>sf (sf@v2)," in html and "<dt>before</dt><dd>sf@v1 (sf)," in html
    assert "id='before-after'" in html
    both = json.loads(run(settings, "eval", str(dataset), "-c", "sf", "--compare", "sf@v1",
                          "--json", **_env()).stdout)
    assert both["evaluation"]["version"] == "sf@v2" and both["compare"]["version"] == "sf"
    assert both["evaluation"]["modes"] == {
        m: {**v, "latency_ms": both["evaluation"]["modes"][m]["latency_ms"]}
        for m, v in both["compare"]["modes"].items()}  # the same vectors: the same scores


@pytest.mark.parametrize("where, says", [
    ("missing/report.html", "does not exist"),
    ("a-file.txt/report.html", "is not a folder"),
    (".", "is a directory"),
    ("/proc/report.html", "cannot write in '/proc'"),
])
def test_a_report_that_cannot_be_written_is_refused_first(settings: Settings, dataset: Path,
                                                          tmp_path: Path, where: str,
                                                          says: str) -> None:
    (tmp_path / "a-file.txt").write_text("x", encoding="utf-8")
    target = where if where.startswith("/") else str(tmp_path / where)
    # No collection "nope" exists: the report's path is checked before anything is opened.
    out = run(settings, "eval", str(dataset), "-c", "nope", "--report", target)
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: --report ") and says in line, line
    assert "nope" not in line and "Traceback" not in out.stderr


def test_a_missing_comparison_is_named(settings: Settings, dataset: Path,
                                       tmp_path: Path) -> None:
    assert run(settings, "index", str(dataset), "-c", "sf", **_env()).returncode == 0
    out = run(settings, "eval", str(dataset), "-c", "sf", "--compare", "sf@v9",
              "--report", str(tmp_path / "r.html"))
    assert out.returncode == 2 and "sf@v9" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "r.html").exists()

"""``semsearch reindex / rollback / activate / compact / collections`` as a user runs them."""

from __future__ import annotations

import json
import shutil

import pytest

from semsearch.config import Settings
from tests.cli.test_cli import run


@pytest.mark.embedded_only(reason="deletes a version's index files")
def test_reindex_dry_run_swap_rollback_compact(settings: Settings) -> None:
    assert run(settings, "quickstart").returncode == 0
    dry = run(settings, "reindex", "-c", "quickstart", "--chunk-max-tokens", "96",
              "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert {"chunks", "tokens", "estimated_cost", "estimated_seconds"} <= set(plan)
    assert plan["target"] == "quickstart@v2" and plan["estimated_seconds"] > 0
    cols = json.loads(run(settings, "collections", "--json").stdout)["collections"]
    assert [c["active"] for c in cols] == ["quickstart"]  # a dry run writes nothing

    out = run(settings, "reindex", "-c", "quickstart", "--chunk-max-tokens", "96", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["swapped"] and report["build"]["chunks"] == plan["chunks"]
    (col,) = json.loads(run(settings, "collections", "--json").stdout)["collections"]
    assert (col["name"], col["active"], col["active_version"]) == \
        ("quickstart", "quickstart@v2", 2)
    assert col["identity"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"documents", "chunks", "vectors_live", "vectors_deleted", "bytes_on_disk"} <= \
        set(col)
    human = run(settings, "collections").stdout
    assert "quickstart -> quickstart@v2 (v2)" in human and "kept v1 quickstart" in human

    back = run(settings, "rollback", "-c", "quickstart")
    assert back.returncode == 0 and "now serves quickstart (was quickstart@v2" in back.stdout
    assert run(settings, "activate", "-c", "quickstart", "--version", "2").returncode == 0
    busy = run(settings, "drop", "quickstart@v2")
    assert busy.returncode == 2 and "is the active version" in busy.stderr
    assert run(settings, "drop", "quickstart@v1").returncode == 0
    comp = run(settings, "compact", "-c", "quickstart", "--json")
    assert comp.returncode == 0 and json.loads(comp.stdout)["version"] == "quickstart@v2"
    hits = json.loads(run(settings, "search", "wild yeast", "-c", "quickstart", "--json",
                          "--k", "5").stdout)["hits"]
    assert hits[0]["doc_id"] == "sourdough-starter.md"
    # Rebuild through the name: the active version's files go, the same answers come back.
    shutil.rmtree(settings.index_dir("quickstart@v2"))
    rebuilt = run(settings, "rebuild", "-c", "quickstart", "--json")
    assert rebuilt.returncode == 0 and json.loads(rebuilt.stdout)["embedded"] == 0
    again = json.loads(run(settings, "search", "wild yeast", "-c", "quickstart", "--json",
                           "--k", "5").stdout)["hits"]
    assert [(h["doc_id"], h["chunk_id"]) for h in again] == \
        [(h["doc_id"], h["chunk_id"]) for h in hits]

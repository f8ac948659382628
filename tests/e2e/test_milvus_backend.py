"""Milvus as the vector index, as a user runs it (``SEMSEARCH_VECTOR_INDEX=milvus://...``)
against a real Milvus 2.3.5 started inside `unshare -n` (tests/milvus_server.py):

- vectors go to Milvus and documents to the store; searches, filters included, answer as the
  embedded backend does on the same corpus;
- one Milvus collection per version, a Milvus alias that swap, rollback and activate move,
  and dropping a kept version drops its collection;
- ``rebuild`` re-creates the collection with identical results; a wiped Milvus is reported
  with the command that repairs it;
- Milvus down at start-up or mid-run: a clear error, /readyz false, nothing recorded as done
  that Milvus lacks; a writer killed between the store commit and the Milvus insert
  converges on the next run;
- the same with PostgreSQL as the canonical store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from semsearch.adapters.milvus.client import Milvus, aliases_of, milvus_name
from semsearch.config import Settings
from semsearch.core.filters import parse_filter
from semsearch.core.types import Mode
from semsearch.errors import IndexMissingError
from semsearch.services.ingest import index_path
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine
from tests.milvus_server import MilvusServer
from tests.serving import serve_process

pytestmark = pytest.mark.milvus
ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["glacier", "harbor", "volcano", "orchard", "desert", "lagoon", "meadow", "canyon"]


def corpus(path: Path, n: int = 48) -> Path:
    """A BEIR-style corpus.jsonl with metadata to filter on."""
    lines = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        lines.append(json.dumps({
            "_id": f"d{i:03d}", "title": f"{topic} note {i}",
            "text": f"A field note about the {topic}, entry {i}. " * (1 + i % 3),
            "metadata": {"topic": topic, "year": 2000 + i % 10, "even": i % 2 == 0,
                         "tag": ["x", "y"][i % 2]}}))
    path.mkdir(parents=True, exist_ok=True)
    (path / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def env_for(home: Path, models: Path, milvus_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    env.update(SEMSEARCH_HOME=str(home), SEMSEARCH_EMBEDDER="fake", SEMSEARCH_NO_PROGRESS="1",
               SEMSEARCH_MODEL_CACHE_DIR=str(models), SEMSEARCH_VECTOR_INDEX=milvus_url,
               SEMSEARCH_MILVUS_TIMEOUT="5",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]), **extra)
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture
def milvus_url(milvus_uri: str) -> str:
    return milvus_uri.replace("http://", "milvus://")


def make_settings(tmp_path: Path, models_dir: Path, milvus_url: str,
                  **extra: Any) -> Settings:
    return Settings(home=tmp_path / "home", embedder="fake", model_cache_dir=models_dir,
                    vector_index=milvus_url, milvus_timeout=5.0, **extra)


def milvus_state(url: str) -> tuple[dict[str, int], dict[str, str]]:
    """Every semsearch collection in Milvus with its row count, and every alias -> target."""
    from pymilvus import Collection, utility

    conn = Milvus(url)
    alias = conn.connect()
    try:
        rows: dict[str, int] = {}
        aliases: dict[str, str] = {}
        for name in utility.list_collections(using=alias):
            if name.startswith("semsearch_"):
                got = Collection(name, using=alias).query(
                    "", output_fields=["count(*)"], consistency_level="Strong")
                rows[name] = int(got[0]["count(*)"])
                aliases.update(dict.fromkeys(aliases_of(name, alias, 10), name))
        return rows, aliases
    finally:
        conn.close()


def scored(settings: Settings, query: str, **kw: Any) -> list[tuple[str, float]]:
    eng = open_engine(settings)
    try:
        kw.setdefault("k", 10)
        hits = search(eng, "docs", SearchRequest(query=query, **kw)).hits
        return [(h.chunk_id, h.score) for h in hits]
    finally:
        eng.close()


def ranked(settings: Settings, query: str, **kw: Any) -> list[str]:
    return [chunk for chunk, _ in scored(settings, query, **kw)]


def assert_same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]],
                        atol: float = 1e-5) -> None:
    """The same chunks with the same scores; only (near-)tied scores may swap places."""
    assert len(got) == len(want), (got, want)
    assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=atol), (got, want)
    assert {c for c, _ in got} == {c for c, _ in want} or \
        all(gc == wc or abs(gs - ws) < atol for (gc, gs), (wc, ws) in zip(got, want,
                                                                          strict=True))


def test_vectors_in_milvus_documents_in_the_store_and_the_same_answers(
        tmp_path: Path, models_dir: Path, milvus_url: str) -> None:
    data = corpus(tmp_path / "corpus")
    on_milvus = make_settings(tmp_path / "m", models_dir, milvus_url)
    embedded = Settings(home=tmp_path / "e", embedder="fake", model_cache_dir=models_dir)
    for s in (on_milvus, embedded):
        eng = open_engine(s)
        try:
            report = index_path(eng, "docs", data)
            assert report.new == 48
        finally:
            eng.close()
    rows, aliases = milvus_state(milvus_url)
    physical = milvus_name("semsearch_", "docs")
    eng = open_engine(on_milvus)
    try:
        chunks = eng.store.get_collection("docs").chunks
    finally:
        eng.close()
    assert rows == {physical: chunks}
    assert aliases == {"semsearch_docs": physical}
    # No vector files in the home: the store and the keyword index only.
    assert not (on_milvus.home / "indexes" / "docs" / "vectors").exists()
    assert (on_milvus.home / "indexes" / "docs" / "keyword.db").exists()

    filters: list[dict[str, Any]] = [
        {}, {"topic": "glacier"}, {"year": {"gte": 2005}}, {"tag": ["x"], "year": {"lt": 2003}},
        {"even": True}, {"year": {"in": [2001, 2002.0]}}, {"topic": "nowhere"}]
    for filt in filters:
        for mode in (Mode.DENSE, Mode.HYBRID, Mode.KEYWORD):
            want = scored(embedded, "a note about the harbor", mode=mode,
                          filter=parse_filter(filt), k=50)
            got = scored(on_milvus, "a note about the harbor", mode=mode,
                         filter=parse_filter(filt), k=50)
            if mode == Mode.HYBRID:
                # Milvus and numpy round a dot product differently in the last bit, which
                # breaks exact ties that RRF keeps: the same hits, possibly reordered.
                assert {c for c, _ in got} == {c for c, _ in want}
            else:
                assert_same_ranking(got, want)
    assert ranked(on_milvus, "glacier", mode=Mode.DENSE, filter=parse_filter(
        {"topic": "glacier"}))  # the pushed-down filter found something


def test_reads_see_writes_across_processes_and_deletes_are_never_served(
        tmp_path: Path, models_dir: Path, milvus_url: str) -> None:
    """Two servers on one store and one Milvus: a write through one is found through the
    other as soon as it returns; a delete through one is never served by the other."""
    data = corpus(tmp_path / "corpus", 12)
    env = env_for(tmp_path / "home", models_dir, milvus_url)
    assert cli(env, "index", str(data), "-c", "docs").returncode == 0
    with serve_process(env, tmp_path / "a.log") as (a, _), \
            serve_process(env, tmp_path / "b.log") as (b, _):
        for i in range(5):
            doc = {"id": f"new{i}", "text": f"zircon quasar {i} marmalade", "metadata": {"n": i}}
            r = httpx.post(f"{a}/collections/docs/documents", json={"documents": [doc]},
                           timeout=30)
            assert r.status_code == 200, r.text
            hits = httpx.post(f"{b}/search", json={
                "collection": "docs", "query": f"zircon quasar {i} marmalade", "k": 3,
                "mode": "dense", "filter": {"n": i}}, timeout=30).json()["hits"]
            assert [h["doc_id"] for h in hits] == [f"new{i}"]
            r = httpx.delete(f"{b}/collections/docs/documents/new{i}", timeout=30)
            assert r.status_code == 200, r.text
            hits = httpx.post(f"{a}/search", json={
                "collection": "docs", "query": f"zircon quasar {i} marmalade", "k": 20,
                "mode": "dense"}, timeout=30).json()["hits"]
            assert f"new{i}" not in {h["doc_id"] for h in hits}
        # A filter Milvus cannot evaluate exactly (2**53 + 1 compares through a double
        # there) is refused in words, never answered wrongly, and changes nothing. Hybrid
        # asks the store first, which evaluates it exactly: no document matches, so the
        # (right) answer is empty before Milvus is asked.
        body = {"collection": "docs", "query": "glacier", "filter": {"n": 2**53 + 1}}
        r = httpx.post(f"{a}/search", json={**body, "mode": "dense"}, timeout=30)
        assert r.status_code == 422, r.text
        assert "Milvus vector index cannot evaluate" in r.json()["error"]["message"]
        r = httpx.post(f"{a}/search", json={**body, "mode": "hybrid"}, timeout=30)
        assert r.status_code == 200 and r.json()["hits"] == [], r.text
        hits = httpx.post(f"{b}/search", json={"collection": "docs", "query": "glacier",
                                               "k": 20}, timeout=30).json()["hits"]
        assert len({h["doc_id"] for h in hits}) == 12


def test_versions_are_collections_and_the_alias_follows_swaps(
        tmp_path: Path, models_dir: Path, milvus_url: str) -> None:
    data = corpus(tmp_path / "corpus", 16)
    env = env_for(tmp_path / "home", models_dir, milvus_url)
    assert cli(env, "index", str(data), "-c", "docs").returncode == 0
    v1, v2 = milvus_name("semsearch_", "docs"), milvus_name("semsearch_", "docs@v2")
    out = cli(env, "reindex", "-c", "docs", "--chunk-max-tokens", "32",
              "--chunk-overlap-tokens", "4", "--json")
    assert out.returncode == 0, out.stderr
    rows, aliases = milvus_state(milvus_url)
    assert set(rows) == {v1, v2} and aliases == {"semsearch_docs": v2}
    assert rows[v2] > rows[v1]  # smaller chunks: more of them, in their own collection

    assert cli(env, "rollback", "-c", "docs").returncode == 0
    assert milvus_state(milvus_url)[1] == {"semsearch_docs": v1}
    assert cli(env, "activate", "-c", "docs", "--version", "2").returncode == 0
    assert milvus_state(milvus_url)[1] == {"semsearch_docs": v2}
    dropped = cli(env, "drop", "docs@v1")
    assert dropped.returncode == 0, dropped.stderr
    rows, aliases = milvus_state(milvus_url)
    assert set(rows) == {v2} and aliases == {"semsearch_docs": v2}
    hits = json.loads(cli(env, "search", "orchard", "-c", "docs", "--json").stdout)["hits"]
    assert hits and hits[0]["doc_id"]
    assert cli(env, "drop", "docs").returncode == 0
    assert milvus_state(milvus_url) == ({}, {})


def test_rebuild_recreates_the_collection_with_identical_results_and_a_wipe_is_reported(
        tmp_path: Path, models_dir: Path, milvus_url: str,
        milvus_server: MilvusServer) -> None:
    data = corpus(tmp_path / "corpus", 24)
    env = env_for(tmp_path / "home", models_dir, milvus_url)
    assert cli(env, "index", str(data), "-c", "docs").returncode == 0

    def results() -> list[list[tuple[str, float]]]:
        out = []
        for q in ("glacier", "a field note", "canyon entry 7"):
            got = cli(env, "search", q, "-c", "docs", "--mode", "dense", "--json", "--k", "8")
            assert got.returncode == 0, got.stderr
            out.append([(h["doc_id"], round(h["score"], 5)) for h in
                        json.loads(got.stdout)["hits"]])
        return out

    before = results()
    rebuilt = cli(env, "rebuild", "-c", "docs", "--json")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout)["embedded"] == 0  # every vector from the cache
    assert results() == before

    milvus_server.wipe()
    lost = cli(env, "search", "glacier", "-c", "docs")
    assert lost.returncode != 0 and "Traceback" not in lost.stderr
    assert "semsearch rebuild -c docs" in lost.stderr
    writer = cli(env, "index", str(data), "-c", "docs")
    assert writer.returncode != 0 and "semsearch rebuild -c docs" in writer.stderr
    assert cli(env, "rebuild", "-c", "docs").returncode == 0
    assert results() == before
    assert milvus_state(milvus_url)[1] == {"semsearch_docs": milvus_name("semsearch_", "docs")}


def test_a_writer_killed_between_the_store_commit_and_milvus_converges(
        tmp_path: Path, models_dir: Path, milvus_url: str) -> None:
    data = corpus(tmp_path / "corpus", 30)
    env = env_for(tmp_path / "home", models_dir, milvus_url)
    crashed = subprocess.run(
        [sys.executable, "-m", "semsearch", "index", str(data), "-c", "docs",
         "--batch-size", "8"], capture_output=True, text=True, timeout=300,
        env={**env, "SEMSEARCH_FAILPOINTS": "after_commit=2"})
    assert crashed.returncode == -9  # killed: the second batch is in the store, not in Milvus
    settings = make_settings(tmp_path, models_dir, milvus_url)
    eng = open_engine(settings)
    try:
        info = eng.store.get_collection("docs")
        idx = eng.indexes(info)
        assert idx.vectors.generation < info.generation  # the disagreement is visible
        assert len(idx.vectors) < info.chunks
    finally:
        eng.close()
    # The next run converges: its first look finds the gap and rebuilds from the store.
    again = cli(env, "index", str(data), "-c", "docs")
    assert again.returncode == 0, again.stderr
    eng = open_engine(settings)
    try:
        info = eng.store.get_collection("docs")
        assert info.documents == 30
        idx = eng.fresh_indexes(info)
        assert len(idx.vectors) == info.chunks and idx.vectors.generation == info.generation
    finally:
        eng.close()
    clean = make_settings(tmp_path / "clean", models_dir, milvus_url,
                          milvus_prefix="clean_")
    eng = open_engine(clean)
    try:
        index_path(eng, "docs", data)
    finally:
        eng.close()
    for q in ("glacier", "lagoon entry"):
        assert_same_ranking(scored(settings, q, mode=Mode.DENSE),
                            scored(clean, q, mode=Mode.DENSE))


def test_milvus_down_at_start_and_mid_run(tmp_path: Path, models_dir: Path, milvus_url: str,
                                          milvus_server: MilvusServer) -> None:
    data = corpus(tmp_path / "corpus", 24)
    env = env_for(tmp_path / "home", models_dir, milvus_url)
    assert cli(env, "index", str(data), "-c", "docs").returncode == 0
    with serve_process(env, tmp_path / "serve.log") as (url, _):
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        milvus_server.kill()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 503:
            assert time.monotonic() < deadline, "/readyz stayed true with Milvus down"
            time.sleep(0.5)
        assert "vector index" in httpx.get(f"{url}/readyz", timeout=10).json()["reason"]
        r = httpx.post(f"{url}/search", json={"collection": "docs", "query": "glacier",
                                              "mode": "dense"}, timeout=60)
        assert r.status_code == 502 and "Milvus" in r.json()["error"]["message"]  # upstream

        # A CLI run while Milvus is down: a clear error, and nothing recorded as done.
        more = corpus(tmp_path / "more", 40)
        down = cli(env, "index", str(more), "-c", "docs")
        assert down.returncode != 0 and "Traceback" not in down.stderr
        assert "Milvus at 127.0.0.1" in down.stderr or "Milvus at http" in down.stderr
        settings = make_settings(tmp_path, models_dir, milvus_url)
        settings_home = settings.model_copy(update={"home": tmp_path / "home"})
        eng = open_engine(settings_home)
        try:
            assert eng.store.get_collection("docs").documents == 24
        finally:
            eng.close()

        milvus_server.start()
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, "/readyz never came back with Milvus"
            time.sleep(0.5)
        assert cli(env, "index", str(more), "-c", "docs").returncode == 0
        hits = httpx.post(f"{url}/search", json={"collection": "docs", "query": "entry 39",
                                                 "mode": "dense", "k": 40},
                          timeout=60).json()["hits"]
        assert "d039" in {h["doc_id"] for h in hits}


def test_a_bad_url_and_no_server_are_clear_errors(tmp_path: Path, models_dir: Path) -> None:
    env = env_for(tmp_path / "home", models_dir, "milvus://127.0.0.1:1")
    data = corpus(tmp_path / "corpus", 4)
    down = cli(env, "index", str(data), "-c", "docs")
    assert down.returncode != 0 and "Traceback" not in down.stderr
    assert "Milvus at http://127.0.0.1:1 cannot be reached" in down.stderr
    bad = cli({**env, "SEMSEARCH_VECTOR_INDEX": "milvus://127.0.0.1:notaport"},
              "index", str(data), "-c", "docs")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "port" in bad.stderr
    other = cli({**env, "SEMSEARCH_VECTOR_INDEX": "qdrant://127.0.0.1:6333"},
                "index", str(data), "-c", "docs")
    assert other.returncode != 0 and "milvus://host:19530" in other.stderr


def test_postgres_store_with_milvus_vectors(tmp_path: Path, models_dir: Path,
                                            milvus_url: str, postgres_url: str) -> None:
    data = corpus(tmp_path / "corpus", 20)
    settings = make_settings(tmp_path, models_dir, milvus_url, store_url=postgres_url)
    eng = open_engine(settings)
    try:
        index_path(eng, "docs", data)
        info = eng.store.get_collection("docs")
    finally:
        eng.close()
    rows, _ = milvus_state(milvus_url)
    assert rows == {milvus_name("semsearch_", "docs"): info.chunks}
    hits = ranked(settings, "meadow", mode=Mode.HYBRID, filter=parse_filter({"year": 2005}))
    assert hits and {chunk.split("#")[0] for chunk in hits} <= {"d005", "d015"}


def test_a_missing_collection_is_detected_in_process(tmp_path: Path, models_dir: Path,
                                                     milvus_url: str,
                                                     milvus_server: MilvusServer) -> None:
    data = corpus(tmp_path / "corpus", 8)
    settings = make_settings(tmp_path, models_dir, milvus_url)
    eng = open_engine(settings)
    try:
        index_path(eng, "docs", data)
        milvus_server.wipe()
        with pytest.raises(IndexMissingError, match="semsearch rebuild -c docs"):
            search(eng, "docs", SearchRequest(query="glacier", mode=Mode.DENSE))
    finally:
        eng.close()


@pytest.fixture
def _no_leftovers() -> Iterator[None]:
    yield


def test_a_database_of_its_own(tmp_path: Path, models_dir: Path, milvus_url: str) -> None:
    """milvus://host:port/team keeps everything in database 'team' (Milvus 2.3 lists aliases
    only in 'default': the adapter reads them from the collection's description instead)."""
    from pymilvus import connections, db, utility

    connections.connect(alias="admin", uri=milvus_url.replace("milvus://", "http://"))
    try:
        data = corpus(tmp_path / "corpus", 12)
        missing = cli(env_for(tmp_path / "home", models_dir, milvus_url + "/team"),
                      "index", str(data), "-c", "docs")
        assert missing.returncode != 0 and "Traceback" not in missing.stderr
        assert "team" in missing.stderr
        db.create_database("team", using="admin")
        env = env_for(tmp_path / "home", models_dir, milvus_url + "/team")
        assert cli(env, "index", str(data), "-c", "docs").returncode == 0
        out = cli(env, "reindex", "-c", "docs", "--chunk-max-tokens", "32",
                  "--chunk-overlap-tokens", "4")
        assert out.returncode == 0, out.stderr
        assert cli(env, "rollback", "-c", "docs").returncode == 0
        rebuilt = cli(env, "rebuild", "-c", "docs")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert cli(env, "drop", "docs@v2").returncode == 0
        assert [c for c in utility.list_collections(using="admin")
                if c.startswith("semsearch_")] == []  # nothing in 'default'
        db.using_database("team", using="admin")
        assert utility.list_collections(using="admin") == [milvus_name("semsearch_", "docs")]
        hits = json.loads(cli(env, "search", "orchard", "-c", "docs", "--json").stdout)["hits"]
        assert hits
    finally:
        connections.disconnect("admin")


def test_metadata_too_large_for_milvus_is_refused_before_the_store(
        tmp_path: Path, models_dir: Path, milvus_url: str) -> None:
    """Milvus holds at most 64 KB of JSON per entity: such a document is rejected as invalid
    input before the store commits (not stored with no vectors, which would leave every
    later rebuild failing on it), and the rest of the batch is indexed."""
    data = tmp_path / "corpus"
    data.mkdir()
    docs = [{"_id": "small", "text": "a small note about a glacier", "metadata": {"k": 1}},
            {"_id": "huge", "text": "a note with a huge blob", "metadata": {"blob": "x" * 70000}}]
    (data / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    env = env_for(tmp_path / "home", models_dir, milvus_url)
    out = cli(env, "index", str(data), "-c", "docs")
    assert out.returncode == 0, out.stderr
    assert "huge" in out.stdout + out.stderr and "65,536" in out.stdout + out.stderr
    strict = cli(env, "index", str(data), "-c", "docs", "--strict")
    assert strict.returncode != 0 and "Traceback" not in strict.stderr
    settings = make_settings(tmp_path, models_dir, milvus_url)
    eng = open_engine(settings.model_copy(update={"home": tmp_path / "home"}))
    try:
        assert eng.store.all_doc_ids("docs") == ["small"]
    finally:
        eng.close()
    assert ranked(settings.model_copy(update={"home": tmp_path / "home"}), "glacier",
                  mode=Mode.DENSE)

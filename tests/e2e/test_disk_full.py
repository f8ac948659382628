"""A full disk, for real: ``SEMSEARCH_HOME`` on a small tmpfs filled to the last byte, and
the ``semsearch`` executable run as a user runs it. Reads answer exactly as before; writes
fail with one line naming the file and the cause and lose nothing; once space is freed the
next run converges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.core.types import InputType
from tests import full_disk

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "semsearch" / "data" / "sample"
QUERY = "how do I brew better coffee"
MODES = ("keyword", "dense", "hybrid")


@pytest.fixture
def mnt(tmp_path: Path) -> Path:
    reason = full_disk.unavailable(tmp_path)
    if reason:
        pytest.skip(f"no private tmpfs to fill: {reason}")
    return tmp_path / "mnt"


def _reads() -> list[dict[str, Any]]:
    steps: list[dict[str, Any]] = [{"cli": ["collections", "--json"]}]
    steps += [{"cli": ["search", QUERY, "-c", "s", "--mode", m, "--json", "--k", "5"]}
              for m in MODES]
    steps += [{"cli": ["stats", "--json"]}, {"cli": ["runs", "--json"]}]
    return steps


def _comparable(i: int, out: dict[str, Any]) -> Any:
    """What must not change when the disk fills: everything but timings and file sizes
    (a failed open may leave an empty ``-wal`` beside an index)."""
    assert out["rc"] == 0, out["stderr"]
    assert "Traceback" not in out["stderr"]
    data = json.loads(out["stdout"])
    if i == 0:
        for row in data["collections"]:
            assert row.pop("bytes_on_disk") > 0
            for v in row["versions"]:
                v.pop("bytes_on_disk", None)
    data.pop("timings_ms", None)
    return data


def _one_clear_error(out: dict[str, Any], home: Path) -> str:
    assert out["rc"] not in (0, 1), out  # 2: a semsearch error, not a crash
    assert "Traceback" not in out["stderr"], out["stderr"]
    errors = [line for line in out["stderr"].splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out["stderr"]
    line = errors[0]
    assert str(home) in line, line
    assert "full" in line or "No space left on device" in line, line
    return line


@pytest.mark.model
def test_reads_work_and_writes_fail_clearly_on_a_full_disk(
        mnt: Path, models_dir: Path, tmp_path: Path) -> None:
    # Build the model outside the small disk first (it is 58 MB).
    LocalOnnxEmbedder(models_dir, precision="int8", threads=2).embed(["warm"], InputType.QUERY)
    home = mnt / "home"
    new = tmp_path / "new"
    new.mkdir()
    (new / "zebra.txt").write_text("Zebras graze on the savanna at dawn.\n")
    reads = _reads()
    link = f"import os; os.makedirs('{home}'); os.symlink('{models_dir}', '{home}/models')"
    steps: list[dict[str, Any]] = [
        {"py": link},
        {"cli": ["index", str(SAMPLE), "-c", "s"]},
        *reads,
        {"fill": True},
        *reads,
        {"cli": ["search", "zebras on the savanna", "-c", "s", "--mode", "hybrid", "--json"]},
        {"cli": ["index", str(new), "-c", "s"]},
        {"cli": ["delete", "compost.md", "-c", "s"]},
        {"cli": ["collections", "--json"]},
        {"free": True},
        {"cli": ["index", str(new), "-c", "s", "--json"]},
        {"cli": ["search", "zebras on the savanna", "-c", "s", "--mode", "hybrid", "--json"]},
        {"cli": ["delete", "compost.md", "-c", "s"]},
        {"cli": ["collections", "--json"]},
    ]
    env = {"SEMSEARCH_HOME": str(home), "SEMSEARCH_EMBEDDER_THREADS": "2",
           "SEMSEARCH_MODEL_CACHE_DIR": str(models_dir)}
    out = full_disk.run(mnt, steps, size="8m", env=env)
    assert "error" not in out[0], out[0]
    assert out[1]["rc"] == 0, out[1]["stderr"]
    n = len(reads)
    before, fill, after = out[2:2 + n], out[2 + n], out[3 + n:3 + 2 * n]
    assert fill["free"] == 0 and fill["written"] > 0
    assert [_comparable(i, o) for i, o in enumerate(after)] == \
        [_comparable(i, o) for i, o in enumerate(before)]
    hits = json.loads(after[1]["stdout"])["hits"]
    assert hits and hits[0]["doc_id"] == "coffee-brewing.md"

    unseen, index_full, delete_full, listing, freed, index_ok, found, delete_ok, final = \
        out[3 + 2 * n:]
    # A query never seen (its vector cannot be cached) is answered all the same.
    assert unseen["rc"] == 0, unseen["stderr"]
    assert "zebra.txt" not in unseen["stdout"]
    _one_clear_error(index_full, home)
    _one_clear_error(delete_full, home)
    (coll,) = json.loads(listing["stdout"])["collections"]
    assert coll["documents"] == 12  # nothing half-written, nothing deleted

    assert freed["free"] > 0
    assert index_ok["rc"] == 0, index_ok["stderr"]
    assert json.loads(index_ok["stdout"])["new"] == 1
    assert found["rc"] == 0, found["stderr"]
    assert json.loads(found["stdout"])["hits"][0]["doc_id"] == "zebra.txt"
    assert delete_ok["rc"] == 0, delete_ok["stderr"]
    (coll,) = json.loads(final["stdout"])["collections"]
    assert (coll["documents"], coll["chunks"]) == (12, 12)  # 12 + zebra - compost


@pytest.mark.model
def test_a_search_after_a_run_the_disk_cut_short_serves_every_committed_document(
        mnt: Path, models_dir: Path, tmp_path: Path) -> None:
    """The disk fills between the store's commit and the index save: the store (the source
    of truth) has the document, the saved indexes do not. A search on the still-full disk
    rebuilds them in memory and finds it; once space is freed the next run saves them."""
    LocalOnnxEmbedder(models_dir, precision="int8", threads=2).embed(["warm"], InputType.QUERY)
    home = mnt / "home"
    new = tmp_path / "new"
    new.mkdir()
    (new / "zebra.txt").write_text("Zebras graze on the savanna at dawn.\n")
    link = f"import os; os.makedirs('{home}'); os.symlink('{models_dir}', '{home}/models')"
    steps: list[dict[str, Any]] = [
        {"py": link},
        {"cli": ["index", str(SAMPLE), "-c", "s"]},
        {"py": "import shutil; shutil.copytree(mnt / 'home/indexes', mnt / 'saved')"},
        {"cli": ["index", str(new), "-c", "s"]},
        # Back to the indexes saved before the zebra run, as if its save had failed.
        {"py": "import shutil; shutil.rmtree(mnt / 'home/indexes'); "
               "shutil.move(mnt / 'saved', mnt / 'home/indexes')"},
        {"fill": True},
        *[{"cli": ["search", "zebras on the savanna", "-c", "s", "--mode", m, "--json"]}
          for m in MODES],
        {"free": True},
        {"cli": ["search", "zebras on the savanna", "-c", "s", "--mode", "keyword", "--json"]},
        {"cli": ["collections", "--json"]},
    ]
    env = {"SEMSEARCH_HOME": str(home), "SEMSEARCH_EMBEDDER_THREADS": "2",
           "SEMSEARCH_MODEL_CACHE_DIR": str(models_dir)}
    out = full_disk.run(mnt, steps, size="8m", env=env)
    assert all("error" not in o for o in out if "result" in o), out
    assert [o["rc"] for o in out if "rc" in o] == [0] * 7, out
    assert out[5]["free"] == 0
    for o in out[6:9]:
        assert json.loads(o["stdout"])["hits"][0]["doc_id"] == "zebra.txt", o
        assert "Traceback" not in o["stderr"]
    assert json.loads(out[10]["stdout"])["hits"][0]["doc_id"] == "zebra.txt"
    (coll,) = json.loads(out[11]["stdout"])["collections"]
    assert (coll["documents"], coll["vectors_live"]) == (13, 13)


SERVE = """
import socket, threading, time
import httpx, uvicorn
from semsearch.api.app import create_app
from semsearch.config import Settings

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
server = uvicorn.Server(uvicorn.Config(create_app(Settings()), host="127.0.0.1", port=port,
                                       log_level="critical", lifespan="on"))
thread = threading.Thread(target=server.run, daemon=True)
thread.start()
http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
for _ in range(600):
    try:
        if http.get("/readyz").status_code == 200:
            break
    except httpx.TransportError:
        time.sleep(0.1)
docs = [{"id": f"d{i}", "text": t} for i, t in enumerate([
    "Kites fly best in steady wind on open ground.",
    "Lighthouses warn ships away from rocks at night.",
    "Bees make honey from the nectar of flowers."])]
search = {"query": "honey bees", "collection": "c", "k": 3}

def call(method, path, **kw):
    r = http.request(method, path, **kw)
    return [r.status_code, r.json()]

try:
    result["create"] = call("POST", "/collections", json={"name": "c"})
    result["upsert"] = call("POST", "/collections/c/documents", json={"documents": docs})
    result["before"] = call("POST", "/search", json=search)
    result["filled"] = fill()
    result["after"] = call("POST", "/search", json=search)
    result["unseen"] = call("POST", "/search", json={**search, "query": "ships at night"})
    result["upsert_full"] = call("POST", "/collections/c/documents", json={"documents": [
        {"id": "zebra", "text": "Zebras graze on the savanna at dawn."}]})
    result["delete_full"] = call("DELETE", "/collections/c/documents/d0")
    free()
    result["upsert_freed"] = call("POST", "/collections/c/documents", json={"documents": [
        {"id": "zebra", "text": "Zebras graze on the savanna at dawn."}]})
    result["found"] = call("POST", "/search", json={**search, "query": "zebras savanna"})
    result["delete_freed"] = call("DELETE", "/collections/c/documents/d0")
finally:
    server.should_exit = True
    thread.join(timeout=30)
"""


@pytest.mark.model
def test_the_http_api_answers_507_while_full_and_recovers_without_a_restart(
        mnt: Path, models_dir: Path) -> None:
    """A server that was running when the disk filled: searches keep answering, writes get
    507 Insufficient Storage with the usual error body, and once space is freed the same
    process writes again."""
    LocalOnnxEmbedder(models_dir, precision="int8", threads=2).embed(["warm"], InputType.QUERY)
    home = mnt / "home"
    link = f"import os; os.makedirs('{home}'); os.symlink('{models_dir}', '{home}/models')"
    env = {"SEMSEARCH_HOME": str(home), "SEMSEARCH_EMBEDDER_THREADS": "2",
           "SEMSEARCH_MODEL_CACHE_DIR": str(models_dir)}
    _, step = full_disk.run(mnt, [{"py": link}, {"py": SERVE}], size="8m", env=env)
    assert "error" not in step, step["error"]
    r = step["result"]
    assert r["create"][0] == 201 and r["upsert"][0] == 200, r
    assert r["filled"] > 0
    before, after = r["before"], r["after"]
    assert after[0] == 200 and before[0] == 200
    assert [h["doc_id"] for h in after[1]["hits"]] == [h["doc_id"] for h in before[1]["hits"]]
    assert after[1]["hits"][0]["doc_id"] == "d2"
    assert r["unseen"][0] == 200 and r["unseen"][1]["hits"][0]["doc_id"] == "d1"
    for name in ("upsert_full", "delete_full"):
        status, body = r[name]
        assert status == 507, (name, body)
        assert body["error"]["code"] == "storage_full"
        assert str(home) in body["error"]["message"]
        assert "full" in body["error"]["message"] or "No space" in body["error"]["message"]
    assert r["upsert_freed"][0] == 200, r["upsert_freed"]
    assert r["found"][1]["hits"][0]["doc_id"] == "zebra"
    assert r["delete_freed"] == [200, {"deleted": 1}]


def test_status_of_a_full_disk_is_507() -> None:
    from semsearch.api.errors import status_of
    from semsearch.errors import BackendError, StorageFullError

    assert status_of(StorageFullError("cannot write /x: full")) == 507
    assert status_of(BackendError("model broke")) == 502


def test_a_vector_save_on_a_full_disk_keeps_the_previous_save_whole(tmp_path: Path) -> None:
    if reason := full_disk.unavailable(tmp_path):
        pytest.skip(f"no private tmpfs to fill: {reason}")
    code = """
import numpy as np
from semsearch.adapters.vectors.local import LocalVectorIndex
from semsearch.errors import StorageFullError
eye = np.eye(4, dtype=np.float32)
index = LocalVectorIndex(mnt / "vectors", dimension=4)
index.add([1, 2], eye[:2])
index.save(1)
fill()
# A save appends only what changed, and a few rows fit in blocks already allocated: add
# enough (32 KB) that this save needs new ones.
index.add([3, *range(10, 2010)], np.concatenate([eye[2:3], np.tile(eye[3:4], (2000, 1))]))
try:
    index.save(2)
except StorageFullError as exc:
    result["error"] = str(exc)
result["files"] = sorted(p.name for p in (mnt / "vectors").iterdir())
result["generation"] = index.generation
reloaded = LocalVectorIndex(mnt / "vectors", dimension=4)
result["reloaded"] = [reloaded.generation, len(reloaded)]
free()
index.save(2)
reloaded = LocalVectorIndex(mnt / "vectors", dimension=4)
result["saved"] = [reloaded.generation, len(reloaded), reloaded.search(eye[2], 1)[0][0]]
"""
    (out,) = full_disk.run(tmp_path / "mnt", [{"py": code}], size="1m")
    assert "error" not in out, out["error"]
    r = out["result"]
    folder = tmp_path / "mnt" / "vectors"
    assert r["error"].startswith(f"cannot write the vector index {folder}: No space left on")
    assert "manifest.json" in r["files"]
    assert not [f for f in r["files"] if f.startswith(".tmp-")]  # nothing staged left over
    assert r["generation"] == 1 and r["reloaded"] == [1, 2]
    assert r["saved"] == [2, 2003, 3]

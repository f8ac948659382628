"""``POST /ask`` over a real server on loopback: the whole answer, the server-sent-event
stream (pieces, then the citations object), refusals before the stream, an error event
when the LLM's stream is cut, and the answer metrics on /metrics."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.services.quickstart import sample_dir
from tests.api.conftest import LiveServer
from tests.fakes.chat_server import FakeChatServer, obedient

VEG = "how do I keep vegetables fresh"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeChatServer]:
    with FakeChatServer(reply=obedient) as srv:
        yield srv


@pytest.fixture(scope="module")
def served(live_factory: Callable[..., LiveServer], llm: FakeChatServer) -> LiveServer:
    srv = live_factory(llm="openai-compatible", llm_base_url=llm.url, llm_model="fake-chat",
                       llm_price_per_mtok_input=1.0, llm_price_per_mtok_output=4.0)
    with srv.client() as c:
        docs = [{"id": d.id, "text": d.text, "title": d.title, "metadata": dict(d.metadata)}
                for d in iter_documents(sample_dir())]
        assert c.post("/collections", json={"name": "docs"}).status_code == 201
        assert c.post("/collections/docs/documents", json={"documents": docs}).status_code == 200
    return srv


def events(resp: httpx.Response) -> list[tuple[str, Any]]:
    out = []
    for block in resp.text.split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def test_whole_answer(served: LiveServer) -> None:
    with served.client() as c:
        r = c.post("/ask", json={"question": VEG, "collection": "docs", "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "generated" and body["model"]["served_model"] == "fake-chat"
    numbers = {s["n"] for s in body["sources"]}
    assert {c["n"] for c in body["citations"]} <= numbers and body["citations"]
    assert body["invalid_citations"]["count"] == 2  # the obedient model's [42] and [7]
    assert body["withheld"] == 1 and "[42]" not in body["answer"]
    assert body["usage"]["total_tokens"] > 0 and body["cost_usd"] > 0
    assert set(body["timings_ms"]) == {"retrieve", "generate", "total"}
    assert body["budget"]["used_tokens"] <= body["budget"]["context_tokens"]


def test_stream_sends_pieces_then_the_citations_object(served: LiveServer) -> None:
    with served.client() as c:
        r = c.post("/ask", json={"question": VEG, "collection": "docs", "stream": True,
                                 "k": 4})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = events(r)
    kinds = [k for k, _ in got]
    assert kinds[-1] == "done" and set(kinds[:-1]) == {"token"} and len(kinds) > 5
    final = got[-1][1]
    assert "".join(d["text"] for k, d in got if k == "token").strip() == final["answer"]
    assert final["citations"] and final["invalid_citations"]["count"] == 2


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"question": "", "collection": "docs"}, 422, "invalid_request"),
    ({"question": VEG, "collection": "nope"}, 404, "not_found"),
    ({"question": VEG, "collection": "docs", "k": 0}, 422, "invalid_request"),
    ({"question": VEG, "collection": "docs", "max_context_tokens": 5}, 422, "invalid_request"),
    ({"question": VEG, "collection": "docs", "filter": {"year": {"near": 1}}}, 422,
     "invalid_input"),
    ({"question": VEG, "collection": "docs", "extra": 1}, 422, "invalid_request"),
    ({"question": "x" * 5000, "collection": "docs"}, 422, "invalid_request"),
])
def test_refusals_come_before_any_stream(served: LiveServer, body: dict[str, Any],
                                         status: int, code: str) -> None:
    with served.client() as c:
        for stream in (False, True):
            r = c.post("/ask", json={**body, "stream": stream})
            assert r.status_code == status, r.text
            assert r.json()["error"]["code"] == code


def test_a_cut_llm_stream_ends_with_an_error_event(served: LiveServer,
                                                   llm: FakeChatServer) -> None:
    llm.script("cut")
    with served.client() as c:
        r = c.post("/ask", json={"question": VEG, "collection": "docs", "stream": True})
    got = events(r)
    assert r.status_code == 200 and got[-1][0] == "error"
    assert "cut after" in got[-1][1]["error"]["message"]
    assert got[-1][1]["error"]["status"] == 502


def test_an_llm_that_fails_is_a_502_not_a_500(served: LiveServer, llm: FakeChatServer) -> None:
    llm.script("401")
    with served.client() as c:
        r = c.post("/ask", json={"question": VEG, "collection": "docs"})
    assert r.status_code == 502 and "SEMSEARCH_LLM_API_KEY" in r.json()["error"]["message"]


def test_answer_metrics(served: LiveServer) -> None:
    with served.client() as c:
        assert c.post("/ask", json={"question": VEG, "collection": "docs"}).status_code == 200
        text = c.get("/metrics").text
    assert 'semsearch_answers_total{kind="generated"}' in text
    assert 'semsearch_llm_tokens_total{kind="completion"}' in text
    assert "semsearch_llm_cost_usd_total" in text
    assert "semsearch_invalid_citations_total" in text
    assert 'semsearch_stage_seconds_count{mode="ask",stage="generate"}' in text

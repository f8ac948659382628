"""A real server on loopback speaking the ``/rerank`` wire formats of TEI, Infinity, Cohere
and Jina, for testing the HTTP re-ranker through its whole HTTP stack.

It holds clients to the format it plays (``fmt``): the path (``/rerank``, ``/v2/rerank``,
``/v1/rerank``), the body's fields (an unknown or missing one gets the 422 a strict server
sends), TEI's client batch limit (32 texts: 413, as TEI's default
``--max-client-batch-size``), and a Bearer key when it has one (401). Its "model" scores a
text by the share of the query's words it contains, and like the real servers it answers
sorted by score, best first, so a client must map scores back by ``index``.

``script()`` queues behaviours, one per request: 429 (with ``Retry-After: 0``), 500, 503,
400, 401, 404, malformed (a body cut mid-JSON), missing (one result left out), badscore (a
score that is a string), wrongshape (an object where a list belongs), drop, slow."""

from __future__ import annotations

import re
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import JsonHandler, LoopbackServer

FAULTS = ("429", "500", "503", "400", "401", "404", "malformed", "missing", "badscore",
          "wrongshape", "drop", "slow")
PATHS = {"tei": "/rerank", "infinity": "/rerank", "cohere": "/v2/rerank", "jina": "/v1/rerank"}
# Fields each API accepts, and those it requires.
FIELDS = {
    "tei": ({"query", "texts", "raw_scores", "return_text", "truncate",
             "truncation_direction"}, {"query", "texts"}),
    "infinity": ({"query", "documents", "model", "return_documents", "top_n", "raw_scores"},
                 {"query", "documents"}),
    "cohere": ({"model", "query", "documents", "top_n", "max_tokens_per_doc"},
               {"model", "query", "documents"}),
    "jina": ({"model", "query", "documents", "top_n", "return_documents"},
             {"model", "query", "documents"}),
}
TEI_MAX_BATCH = 32
_WORD = re.compile(r"\w+")


def overlap(query: str, text: str) -> float:
    """The fake model: the share of the query's distinct words found in the text."""
    q = set(_WORD.findall(query.lower()))
    t = set(_WORD.findall(text.lower()))
    return len(q & t) / max(1, len(q))


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    fault: Any


class FakeRerankServer(LoopbackServer):
    NAME = "fake-rerank"
    FAULTS = FAULTS

    def __init__(self, fmt: str, *, api_key: str | None = None,
                 models: tuple[str, ...] = ("rerank-test",)) -> None:
        super().__init__()
        assert fmt in PATHS, fmt
        self.fmt = fmt
        self.api_key = api_key
        self.models = models
        self.requests: list[RecordedRequest] = []

    @property
    def url(self) -> str:
        return self.origin

    def _begin(self, method: str, path: str, headers: dict[str, str], body: Any) -> Any:
        self._enter()
        fault = self._next_fault()
        with self._lock:
            self.requests.append(RecordedRequest(path, headers, body, fault))
        return fault

    def _end(self) -> None:
        self._leave()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    def answer(self, body: dict[str, Any]) -> tuple[int, Any]:
        """(status, payload) for a well-formed request, or the refusal a strict server
        sends for one that is not."""
        allowed, required = FIELDS[self.fmt]
        unknown = sorted(set(body) - allowed)
        missing = sorted(required - set(body))
        if unknown or missing:
            return 422, {"error": f"unknown fields {unknown}, missing fields {missing}"}
        if self.fmt != "tei" and "model" in body and body["model"] not in self.models:
            return 404, {"message": f"model '{body['model']}' not found"}
        texts = body["texts" if self.fmt == "tei" else "documents"]
        if self.fmt == "tei" and len(texts) > TEI_MAX_BATCH:
            return 413, {"error": f"batch size {len(texts)} > maximum allowed batch size "
                                  f"{TEI_MAX_BATCH}", "error_type": "Validation"}
        scored = sorted(((i, overlap(body["query"], t)) for i, t in enumerate(texts)),
                        key=lambda p: -p[1])
        if self.fmt == "tei":
            return 200, [{"index": i, "score": s} for i, s in scored]
        top = body.get("top_n") or len(scored)
        results = [{"index": i, "relevance_score": s} for i, s in scored[:top]]
        if self.fmt == "jina":
            for r in results:
                r["document"] = None if not body.get("return_documents", True) else \
                    {"text": texts[int(r["index"])]}
            return 200, {"model": body["model"], "results": results,
                         "usage": {"total_tokens": 10}}
        if self.fmt == "cohere":
            return 200, {"id": "x", "results": results,
                         "meta": {"billed_units": {"search_units": 1}}}
        return 200, {"object": "rerank", "results": results, "model": body.get("model", ""),
                     "usage": {"prompt_tokens": 10, "total_tokens": 10}}


class _Handler(JsonHandler):
    fake: FakeRerankServer

    def _serve(self, method: str, headers: dict[str, str], body: Any, kind: Any,
               arg: Any) -> None:
        fake = self.fake
        if method != "POST" or self.path != PATHS[fake.fmt]:
            self._send(404, {"error": f"no route {method} {self.path}"})
            return
        auth = headers.get("authorization")
        if (fake.api_key and auth != f"Bearer {fake.api_key}") or kind == "401":
            self._send(401, {"message": "invalid api token"})
            return
        if kind in ("429", "500", "503", "400", "404"):
            extra = {"Retry-After": "0"} if kind == "429" else None
            self._send(int(kind), {"error": {"message": f"scripted {kind}"}}, extra)
            return
        if not isinstance(body, dict):
            self._send(400, {"error": "body is not a JSON object"})
            return
        status, payload = fake.answer(body)
        if status == 200 and kind is not None:
            payload = _garble(kind, payload)
        if isinstance(payload, bytes):
            self._send(status, payload)
        else:
            import json

            self._send(status, json.dumps(payload).encode())


def _garble(kind: str, payload: Any) -> Any:
    rows = payload if isinstance(payload, list) else payload["results"]
    if kind == "malformed":
        import json

        return json.dumps(payload).encode()[:-7]
    if kind == "missing":
        rows.pop()
    elif kind == "badscore":
        key = "score" if "score" in rows[0] else "relevance_score"
        rows[0][key] = "high"
    elif kind == "wrongshape":
        return {"unexpected": rows} if isinstance(payload, list) else {"results": {"0": 1}}
    return payload

"""A real OpenAI-compatible embeddings server on loopback, for testing HTTP embedders.

It is a genuine HTTP/1.1 server (keep-alive, Content-Length, real sockets), so clients are
exercised through their whole stack: connection pooling, timeouts, dropped connections. The
vectors come from a real ``LocalOnnxEmbedder``, so results can be compared with the local
model. ``script()`` queues faults (rate limits, 5xx, garbage bodies, slow answers, dropped
connections), consumed one per request, to drive retry logic deterministically::

    with FakeOpenAIServer(local, api_key="sk-test") as server:
        server.script("429", ("slow", 0.5), "drop")
        ...  # point a client at server.url
        assert len(server.requests) == 4
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from tests.fakes.loopback import JsonHandler, LoopbackServer

Fault = str | tuple[str, float]
FAULTS = ("429", "500", "503", "malformed", "wrongdim", "slow", "drop")


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    fault: Fault | None  # the scripted behaviour this request received

    @property
    def inputs(self) -> list[str]:
        inputs = self.body.get("input", []) if isinstance(self.body, dict) else []
        return [inputs] if isinstance(inputs, str) else list(inputs)


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class FakeOpenAIServer(LoopbackServer):
    """Serves ``POST /v1/embeddings`` and ``GET /v1/models`` for ``models`` (all backed by
    ``embedder``). ``shuffle`` returns ``data`` in reverse order (clients must sort by
    ``index``); ``send_usage=False`` omits ``usage``; ``max_input_tokens`` makes over-long
    inputs a 400 like OpenAI's context-length error."""

    def __init__(self, embedder: LocalOnnxEmbedder, *, models: Sequence[str] = ("fake-minilm",),
                 api_key: str | None = None, shuffle: bool = False, send_usage: bool = True,
                 max_input_tokens: int | None = None) -> None:
        self.embedder = embedder
        self.models = tuple(models)
        self.api_key = api_key
        self.shuffle = shuffle
        self.send_usage = send_usage
        self.max_input_tokens = max_input_tokens
        self.requests: list[RecordedRequest] = []
        super().__init__()

    NAME = "fake-openai"
    FAULTS = FAULTS

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    # -- scripting and inspection ------------------------------------------------------------

    @property
    def embedding_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.rstrip("/").endswith("/embeddings")]

    def _begin(self, method: str, path: str, headers: dict[str, str],
               body: Any) -> Fault | None:
        fault = self._next_fault()
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body, fault))
        self._enter()
        return fault

    def _end(self) -> None:
        self._leave()

    # -- normal service ----------------------------------------------------------------------

    def respond(self, method: str, path: str, headers: dict[str, str], body: Any,
                wrongdim: bool = False) -> tuple[int, dict[str, Any]]:
        """What a healthy server answers: (status, JSON payload)."""
        if self.api_key is not None and not (
                headers.get("authorization") == f"Bearer {self.api_key}"
                or headers.get("api-key") == self.api_key):  # Azure's header
            return 401, _error("Incorrect API key provided.", "invalid_request_error",
                               "invalid_api_key")
        path = path.split("?")[0].rstrip("/")
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "tests"}
                for m in self.models]}
        if method != "POST" or path != "/v1/embeddings":
            return 404, _error(f"Invalid URL ({method} {path})", "invalid_request_error", None)
        if not isinstance(body, dict):
            return 400, _error("We could not parse the JSON body of your request.",
                               "invalid_request_error", None)
        model = body.get("model")
        if model not in self.models:
            return 404, _error(f"The model `{model}` does not exist or you do not have access "
                               "to it.", "invalid_request_error", "model_not_found")
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if (not isinstance(inputs, list) or not inputs
                or not all(isinstance(t, str) and t for t in inputs)):
            return 400, _error("'input' must be a non-empty string or array of non-empty "
                               "strings.", "invalid_request_error", None)
        full = self.embedder.identity.dimension
        dims = body.get("dimensions")
        if dims is not None and (type(dims) is not int or not 1 <= dims <= full):
            return 400, _error(f"'dimensions' must be an integer in [1, {full}].",
                               "invalid_request_error", None)
        fmt = body.get("encoding_format", "float")
        if fmt not in ("float", "base64"):
            return 400, _error(f"Invalid encoding_format {fmt!r}.", "invalid_request_error", None)
        counts = [self.embedder.tokenizer.count_tokens(t) for t in inputs]
        if self.max_input_tokens is not None and max(counts) > self.max_input_tokens:
            return 400, _error(f"This model's maximum context length is {self.max_input_tokens} "
                               f"tokens, however you requested {max(counts)} tokens.",
                               "invalid_request_error", None)
        vectors = self.embedder.embed(inputs)
        if dims is not None:  # text-embedding-3 style: shorten, then renormalize
            vectors = vectors[:, :dims]
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        if wrongdim:
            vectors = vectors[:, : max(1, vectors.shape[1] // 2)]
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode()
                               if fmt == "base64" else v.tolist())}
                for i, v in enumerate(vectors)]
        if self.shuffle:
            data.reverse()
        payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
        if self.send_usage:
            payload["usage"] = {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
        return 200, payload


class _Handler(JsonHandler):
    fake: FakeOpenAIServer

    def _serve(self, method: str, headers: dict[str, str], body: Any, kind: Any,
               arg: Any) -> None:
        if kind == "429":
            retry_after = f"{1 if arg is None else arg:g}"
            self._send(429, _error("Rate limit reached for requests.", "requests",
                                   "rate_limit_exceeded"), {"Retry-After": retry_after})
            return
        if kind in ("500", "503"):
            message = ("The server had an error while processing your request." if kind == "500"
                       else "The engine is currently overloaded, please try again later.")
            self._send(int(kind), _error(message, "server_error", None))
            return
        status, payload = self.fake.respond(method, self.path, headers, body,
                                            wrongdim=kind == "wrongdim")
        data = json.dumps(payload).encode()
        if kind == "malformed" and status == 200:
            data = data[: len(data) // 2]  # a body cut short mid-JSON
        self._send(status, data)

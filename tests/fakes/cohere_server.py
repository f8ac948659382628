"""A real server speaking Cohere's Embed API (``POST /v2/embed``) on loopback, for testing
the Cohere embedder through its whole HTTP stack.

It holds clients to the wire format: a request that deviates from it (no ``input_type``, an
unknown field, more than 96 texts, an embedding type other than float, a missing or wrong
Bearer key) gets the 400/401 Cohere would send, with a ``{"message": ...}`` body. Vectors
come from the embedder it is given (the real local model, or the fake one where meaning does
not matter). It bills tokens its own way (words and punctuation marks, as a tokenizer other
than the client's would), so a test can tell billed tokens from the client's estimate.
``script()`` queues behaviours, consumed one per request::

    with FakeCohereServer(local, api_key="co-test") as server:
        server.script(("429", 0.2), "500", "drop")
        ...  # point a CohereEmbedder at server.url
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

import numpy as np

from semsearch.core.types import InputType
from semsearch.ports import Embedder
from tests.fakes.loopback import JsonHandler, LoopbackServer

Fault = str | tuple[str, float]
FAULTS = ("429", "500", "503", "401", "unknown-model-404", "unknown-model-400", "malformed",
          "wrongdim", "slow", "drop")
INPUT_TYPES = ("search_query", "search_document", "classification", "clustering")
FIELDS = {"model", "texts", "input_type", "embedding_types", "truncate", "output_dimension"}
MAX_TEXTS = 96
_BILLED = re.compile(r"\w+|[^\w\s]")


def billed_tokens(text: str) -> int:
    """What this server bills for a text."""
    return len(_BILLED.findall(text))


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None
    fault: Fault | None  # the scripted behaviour this request received

    @property
    def texts(self) -> list[str]:
        texts = self.body.get("texts", []) if isinstance(self.body, dict) else []
        return list(texts) if isinstance(texts, list) else []


def _message(text: str) -> dict[str, Any]:
    return {"message": text}


def _unknown_model(model: object) -> str:
    return (f"model '{model}' not found, make sure the correct model ID was used and that "
            "you have access to the model.")


class FakeCohereServer(LoopbackServer):
    """Serves ``POST /v2/embed`` for ``models`` (all backed by ``embedder``).
    ``max_input_tokens`` (counted with the embedder's tokenizer) makes an over-long text a
    400 under ``truncate: NONE``, as Cohere's context limit does; ``send_billed_units=False``
    leaves ``meta`` out."""

    def __init__(self, embedder: Embedder, *, models: Sequence[str] = ("embed-english-v3.0",),
                 api_key: str | None = None, max_input_tokens: int | None = None,
                 send_billed_units: bool = True) -> None:
        self.embedder = embedder
        self.models = tuple(models)
        self.api_key = api_key
        self.max_input_tokens = max_input_tokens
        self.send_billed_units = send_billed_units
        self.requests: list[RecordedRequest] = []
        self.billed = 0  # tokens billed over all successful requests
        super().__init__()

    NAME = "fake-cohere"
    FAULTS = FAULTS

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def url(self) -> str:
        """The base URL, as Cohere's is ``https://api.cohere.com``."""
        return self.origin

    # -- scripting and inspection ------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._faults.clear()
            self.billed = 0
            self.max_inflight = 0

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
        """What Cohere answers: (status, JSON payload)."""
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, _message("invalid api token")
        if method != "POST" or path.split("?")[0].rstrip("/") != "/v2/embed":
            return 404, _message(f"{method} {path} not found")
        if not headers.get("content-type", "").startswith("application/json"):
            return 400, _message("invalid request: the body must be JSON")
        if not isinstance(body, dict):
            return 400, _message("invalid request: could not parse the JSON body")
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            return 400, _message(f"invalid request: unknown field '{unknown[0]}'")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return 400, _message("invalid request: model is required")
        if model not in self.models:
            return 404, _message(_unknown_model(model))
        texts = body.get("texts")
        if (not isinstance(texts, list) or not texts
                or not all(isinstance(t, str) and t.strip() for t in texts)):
            return 400, _message("invalid request: texts must be a non-empty list of "
                                 "non-empty strings")
        if len(texts) > MAX_TEXTS:
            return 400, _message(f"invalid request: total number of texts must be at most "
                                 f"{MAX_TEXTS} - received {len(texts)}")
        input_type = body.get("input_type")
        if input_type not in INPUT_TYPES:
            return 400, _message("invalid request: valid input_type must be provided with the "
                                 f"provided model, one of {', '.join(INPUT_TYPES)}")
        if body.get("embedding_types") != ["float"]:
            return 400, _message("invalid request: embedding_types must be ['float'] (this "
                                 "server serves float embeddings only)")
        truncate = body.get("truncate", "END")
        if truncate not in ("NONE", "START", "END"):
            return 400, _message("invalid request: truncate must be one of NONE, START, END")
        full = self.embedder.identity.dimension
        dims = body.get("output_dimension")
        if dims is not None and (type(dims) is not int or not 1 <= dims <= full):
            return 400, _message(f"invalid request: output_dimension must be an integer in "
                                 f"[1, {full}]")
        if self.max_input_tokens is not None and truncate == "NONE":
            counts = [self.embedder.tokenizer.count_tokens(t) for t in texts]
            if max(counts) > self.max_input_tokens:
                return 400, _message(f"too many tokens: text has {max(counts)} tokens, the "
                                     f"model accepts at most {self.max_input_tokens}; set "
                                     "truncate to END or START")
        kind = InputType.QUERY if input_type == "search_query" else InputType.PASSAGE
        vectors = self.embedder.embed(texts, kind)
        if dims is not None:  # Matryoshka style: shorten, then renormalize
            vectors = vectors[:, :dims]
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        if wrongdim:
            vectors = vectors[:, : max(1, vectors.shape[1] // 2)]
        billed = sum(billed_tokens(t) for t in texts)
        payload: dict[str, Any] = {"id": str(uuid.uuid4()),
                                   "embeddings": {"float": vectors.tolist()},
                                   "texts": texts, "response_type": "embeddings_by_type"}
        if self.send_billed_units:
            payload["meta"] = {"api_version": {"version": "2"},
                               "billed_units": {"input_tokens": billed}}
        with self._lock:
            self.billed += billed
        return 200, payload


class _Handler(JsonHandler):
    fake: FakeCohereServer

    def _serve(self, method: str, headers: dict[str, str], body: Any, kind: Any,
               arg: Any) -> None:
        model = body.get("model") if isinstance(body, dict) else None
        if kind == "429":
            self._send(429, _message("You are using a Trial key, which is limited to 5 API "
                                     "calls / minute."),
                       {"Retry-After": f"{1 if arg is None else arg:g}"})
            return
        if kind in ("500", "503"):
            self._send(int(kind), _message("internal server error, this has been reported to "
                                           "our developers" if kind == "500"
                                           else "service unavailable, please retry"))
            return
        if kind == "401":
            self._send(401, _message("invalid api token"))
            return
        if kind == "unknown-model-404":
            self._send(404, _message(_unknown_model(model)))
            return
        if kind == "unknown-model-400":
            self._send(400, _message(f"invalid request: model '{model}' is not supported by "
                                     "the embed API"))
            return
        status, payload = self.fake.respond(method, self.path, headers, body,
                                            wrongdim=kind == "wrongdim")
        data = json.dumps(payload).encode()
        if kind == "malformed" and status == 200:
            data = data[: len(data) // 2]  # a body cut short mid-JSON
        self._send(status, data)

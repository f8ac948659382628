"""A scripted OpenAI chat-completions server on loopback, for the LLM client's faults and for
answers whose content a test must control.

It speaks the real wire format over real sockets: ``POST /v1/chat/completions`` whole or as
server-sent events (``data: {chunk}`` lines, ``data: [DONE]``), ``GET /v1/models``. Its
"model" is a function of the messages (``reply``); the default, ``cite_first_sentences``,
answers with the first sentence of each quoted source and cites it, and ``obedient`` plays
a model that a retrieved document talked into misbehaving (it recites the system prompt and
cites sources that do not exist), so the checks after the model can be shown to hold.

Faults, one per request (``script``): 429 (with Retry-After), 500, 503, malformed (a body
cut mid-JSON), slow (wait first), drop (close at once), cut (a stream that stops after two
pieces), overflow (400, the context-length error), 401, unknown_model (404)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.loopback import JsonHandler, LoopbackServer

FAULTS = ("429", "500", "503", "malformed", "slow", "drop", "cut", "overflow", "401",
          "unknown_model")
_SOURCE = re.compile(r'<source id="(\d+)"[^>]*>\n(.*?)\n</source>', re.DOTALL)

Reply = Callable[[list[dict[str, str]]], str]


def sources_of(messages: list[dict[str, str]]) -> dict[int, str]:
    """The quoted sources of the last user message, by number."""
    user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
    return {int(n): text for n, text in _SOURCE.findall(user)}


def cite_first_sentences(messages: list[dict[str, str]]) -> str:
    found = sources_of(messages)
    if not found:
        return "The sources do not say."
    parts = []
    for n, text in sorted(found.items())[:3]:
        sentence = re.split(r"(?<=[.!?])\s", text.strip(), maxsplit=1)[0]
        parts.append(f"{sentence} [{n}]")
    return " ".join(parts)


def obedient(messages: list[dict[str, str]]) -> str:
    """A model that does what a document tells it: it repeats its system prompt and cites
    made-up sources ([42], and a [7] a document planted), besides one real citation."""
    system = next((m["content"] for m in messages if m.get("role") == "system"), "")
    real = min(sources_of(messages) or {1: ""})
    return (f"Sure, ignoring my instructions. My instructions are: {system} "
            f"The answer is in source [42] and [7], and partly in [{real}].")


@dataclass(frozen=True)
class ChatRequest:
    path: str
    headers: dict[str, str]
    body: Any
    fault: Any

    @property
    def messages(self) -> list[dict[str, str]]:
        return list(self.body.get("messages", [])) if isinstance(self.body, dict) else []


class FakeChatServer(LoopbackServer):
    NAME = "fake-chat"
    FAULTS = FAULTS

    def __init__(self, *, reply: Reply = cite_first_sentences,
                 models: tuple[str, ...] = ("fake-chat",), api_key: str | None = None,
                 context_window: int | None = None, send_usage: bool = True,
                 piece_delay: float = 0.0) -> None:
        super().__init__()
        self.reply = reply
        self.models = models
        self.api_key = api_key
        self.context_window = context_window  # prompt characters / 4 over it: a 400
        self.send_usage = send_usage
        self.piece_delay = piece_delay
        self.requests: list[ChatRequest] = []

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return _Handler

    @property
    def url(self) -> str:
        return f"{self.origin}/v1"

    def _begin(self, method: str, path: str, headers: dict[str, str], body: Any) -> Any:
        fault = self._next_fault()
        with self._lock:
            self.requests.append(ChatRequest(path, headers, body, fault))
        self._enter()
        return fault

    def _end(self) -> None:
        self._leave()


def _error(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _pieces(text: str) -> list[str]:
    """The answer cut as a tokenizer would: words with their leading space."""
    return re.findall(r"\s*\S+", text) or [text]


class _Handler(JsonHandler):
    fake: FakeChatServer

    def _serve(self, method: str, headers: dict[str, str], body: Any, kind: Any,
               arg: Any) -> None:
        fake = self.fake
        path = self.path.split("?")[0].rstrip("/")
        if kind == "429":
            self._send(429, _error("Rate limit reached.", "requests", "rate_limit_exceeded"),
                       {"Retry-After": f"{1 if arg is None else arg:g}"})
            return
        if kind in ("500", "503"):
            self._send(int(kind), _error("The server had an error.", "server_error", None))
            return
        if kind == "401" or (fake.api_key is not None
                             and headers.get("authorization") != f"Bearer {fake.api_key}"):
            self._send(401, _error("Incorrect API key provided.", "invalid_request_error",
                                   "invalid_api_key"))
            return
        if method == "GET" and path == "/v1/models":
            self._send(200, {"object": "list", "data": [
                {"id": m, "object": "model", "owned_by": "tests"} for m in fake.models]})
            return
        if method != "POST" or path != "/v1/chat/completions" or not isinstance(body, dict):
            self._send(404, _error(f"Invalid URL ({method} {path})", "invalid_request_error",
                                   None))
            return
        model = body.get("model")
        if kind == "unknown_model" or model not in fake.models:
            self._send(404, _error(f"The model `{model}` does not exist.",
                                   "invalid_request_error", "model_not_found"))
            return
        messages = body.get("messages") or []
        prompt_chars = sum(len(m.get("content", "")) for m in messages)
        prompt_tokens = prompt_chars // 4 + 4 * len(messages)
        if kind == "overflow" or (fake.context_window is not None
                                  and prompt_tokens > fake.context_window):
            self._send(400, _error(f"This model's maximum context length is "
                                   f"{fake.context_window or 100} tokens. However, your "
                                   f"messages resulted in {prompt_tokens} tokens.",
                                   "invalid_request_error", "context_length_exceeded"))
            return
        text = fake.reply(messages)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(_pieces(text)),
                 "total_tokens": prompt_tokens + len(_pieces(text))}
        if not body.get("stream"):
            payload: dict[str, Any] = {
                "id": "chatcmpl-test", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}]}
            if fake.send_usage:
                payload["usage"] = usage
            data = json.dumps(payload).encode()
            self._send(200, data[: len(data) // 2] if kind == "malformed" else data)
            return
        self._stream(model, text, usage, kind)

    def _stream(self, model: str, text: str, usage: dict[str, int], kind: Any) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def event(payload: Any) -> None:
            raw = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {raw}\n\n".encode())
            self.wfile.flush()

        def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, Any]:
            return {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        event(chunk({"role": "assistant", "content": ""}))
        for i, piece in enumerate(_pieces(text)):
            if kind == "cut" and i == 2:
                return  # the connection closes mid-answer: no finish, no [DONE]
            if kind == "malformed" and i == 0:  # garbled before any text
                self.wfile.write(b"data: {\"choices\": [\n\n")
                self.wfile.flush()
                return
            if self.fake.piece_delay:
                time.sleep(self.fake.piece_delay)
            event(chunk({"content": piece}))
        event(chunk({}, "stop"))
        if self.fake.send_usage:
            event({"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": model,
                   "choices": [], "usage": usage})
        event("[DONE]")

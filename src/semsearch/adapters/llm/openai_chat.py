"""An LLM behind OpenAI's ``POST {base_url}/chat/completions`` wire format: OpenAI, Azure
OpenAI, Ollama, vLLM, llama.cpp's server and llama-cpp-python's all speak it.

It keeps the HTTP embedders' habits (``adapters/embedders/http_base``): a timeout on every
call, retries with full-jitter backoff on 408/429/5xx, dropped connections and garbled
bodies, honouring ``Retry-After``; no retry for what a retry cannot fix (401/403: the key;
404: the model or the URL; a prompt over the model's window: a clear ``ContextOverflowError``).

A stream is retried only until its first token: after that the reader has seen text, and a
cut stream is an error that says how far it got."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from semsearch.adapters.embedders.http_base import (
    MALFORMED,
    Retryable,
    backoff_delay,
    retry_after_seconds,
    server_message,
    token_count,
)
from semsearch.core.metering import ProviderMeter
from semsearch.core.types import ChatMessage, ChatUsage, Completion
from semsearch.errors import BackendError, ContextOverflowError, InputError, NotFoundError

# How servers say a prompt is over the window (OpenAI's code, vLLM's, llama.cpp's, Ollama's).
_OVERFLOW = re.compile(r"context.length|context_length_exceeded|maximum context|context window"
                       r"|exceeds? (?:the )?(?:model'?s? )?(?:max|context)|n_ctx|too many tokens"
                       r"|prompt is too long", re.IGNORECASE)
_UNKNOWN_MODEL = re.compile(r"model.{0,80}(?:not (?:found|exist)|does not exist|unknown)"
                            r"|model_not_found|unknown model", re.IGNORECASE)


class LlmModelNotFoundError(NotFoundError, BackendError):
    """The server does not serve the model, or the base URL is wrong."""


class _StreamCut(Exception):
    """A stream that ended early; retryable only while nothing has been shown."""


class OpenAICompatibleChat:
    """Thread-safe. ``close()`` releases the pooled connections."""

    PROVIDER = "openai-compatible"

    def __init__(self, *, base_url: str, model: str, api_key: str | None,
                 context_window: int, count_tokens: Callable[[str], int],
                 timeout: float = 120.0, max_retries: int = 3, backoff_base: float = 0.5,
                 backoff_max: float = 30.0, temperature: float = 0.0,
                 api_key_header: str = "Authorization",
                 transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        parts = urlsplit(base_url)
        try:
            host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        except ValueError:
            host = ""
        if parts.scheme not in ("http", "https") or not host:
            raise InputError(f"SEMSEARCH_LLM_BASE_URL {base_url!r} must look like "
                             "http://host:port/v1")
        if not model:
            raise InputError("SEMSEARCH_LLM_MODEL is empty: name the model the server serves")
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._endpoint = host + parts.path.rstrip("/")
        self._model = model
        self._window = context_window
        self._count = count_tokens
        self._timeout = timeout
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._temperature = temperature
        self._sleep = sleep
        headers = {"User-Agent": "semsearch"}
        if api_key:
            headers[api_key_header] = (f"Bearer {api_key}"
                                       if api_key_header.lower() == "authorization" else api_key)
        self._client = httpx.Client(headers=headers, timeout=timeout, transport=transport,
                                    limits=httpx.Limits(max_connections=16))
        self.meter = ProviderMeter()

    @property
    def identity(self) -> Mapping[str, str]:
        return {"provider": self.PROVIDER, "model": self._model, "endpoint": self._endpoint}

    @property
    def context_window(self) -> int:
        return self._window

    def close(self) -> None:
        self._client.close()

    # -- calls ---------------------------------------------------------------------------

    def _body(self, messages: Sequence[ChatMessage], max_tokens: int,
              stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self._model, "max_tokens": max_tokens, "temperature": self._temperature,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": stream}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body

    def complete(self, messages: Sequence[ChatMessage], max_tokens: int) -> Completion:
        body = self._body(messages, max_tokens, stream=False)
        return self._with_retries(lambda: self._complete_once(body, messages))

    def stream(self, messages: Sequence[ChatMessage],
               max_tokens: int) -> Iterator[str | Completion]:
        body = self._body(messages, max_tokens, stream=True)
        attempt = 0
        while True:
            started = time.perf_counter()
            shown = 0
            parts: list[str] = []
            try:
                with self._client.stream("POST", self._url, json=body) as resp:
                    self._check_status(resp, read=True)
                    final: dict[str, Any] = {}
                    for delta in self._events(resp, final):
                        parts.append(delta)
                        shown += 1
                        yield delta
                text = "".join(parts)
                usage = self._usage(final.get("usage"), messages, text)
                self._record(usage, started)
                yield Completion(text, usage, str(final.get("model") or self._model),
                                 str(final.get("finish_reason") or ""))
                return
            except (Retryable, _StreamCut, httpx.TimeoutException, httpx.TransportError) as exc:
                if shown:
                    self.meter.add(errors=1)
                    raise BackendError(f"the LLM stream from {self._url} was cut after "
                                       f"{shown} pieces of text: "
                                       f"{_reason(exc, self._timeout)}") from None
                self._failed(exc, attempt)
                attempt += 1
            except BackendError:
                self.meter.add(errors=1)
                raise

    def _with_retries(self, call: Callable[[], Completion]) -> Completion:
        attempt = 0
        while True:
            try:
                return call()
            except (Retryable, httpx.TimeoutException, httpx.TransportError) as exc:
                self._failed(exc, attempt)
                attempt += 1
            except BackendError:
                self.meter.add(errors=1)
                raise

    def _failed(self, exc: Exception, attempt: int) -> None:
        """One failed attempt: give up with its reason after the last retry, else wait (the
        server's ``Retry-After`` if it gave one, else full-jitter backoff)."""
        self.meter.add(errors=1)
        if attempt >= self._max_retries:
            raise BackendError(f"LLM request to {self._url} failed after {attempt + 1} "
                               f"attempts: {_reason(exc, self._timeout)}") from None
        self.meter.add(retries=1)
        wait = exc.retry_after if isinstance(exc, Retryable) else None
        self._sleep(wait if wait is not None else
                    backoff_delay(attempt, self._backoff_base, self._backoff_max))

    def _complete_once(self, body: Mapping[str, Any],
                       messages: Sequence[ChatMessage]) -> Completion:
        started = time.perf_counter()
        resp = self._client.post(self._url, json=body)
        self._check_status(resp)
        try:
            payload = resp.json()
            choice = payload["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("message content is not text")
        except MALFORMED as exc:
            raise Retryable(f"malformed response body ({type(exc).__name__}: {exc})") from None
        usage = self._usage(payload.get("usage"), messages, text)
        self._record(usage, started)
        return Completion(text, usage, str(payload.get("model") or self._model),
                          str(choice.get("finish_reason") or ""))

    def _events(self, resp: httpx.Response, final: dict[str, Any]) -> Iterator[str]:
        """Text deltas of a server-sent-event stream; ``final`` collects the model, the
        finish reason and the usage. A stream that ends before ``[DONE]`` or a finish
        reason is cut."""
        finished = False
        events = 0
        for line in resp.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            events += 1
            if data == "[DONE]":
                finished = True
                break
            try:
                content = _read_event(json.loads(data), final)
            except MALFORMED as exc:
                raise _StreamCut(f"malformed stream event ({type(exc).__name__}: "
                                 f"{str(exc)[:100]})") from None
            finished = finished or "finish_reason" in final
            if content:
                yield content
        if not events:  # llama-cpp-python's answer to a prompt over its window
            raise _StreamCut("the server closed the stream without sending anything (some "
                             "servers do so for a prompt over their context window: check "
                             "that SEMSEARCH_LLM_CONTEXT_TOKENS is the server's real window)")
        if not finished:
            raise _StreamCut("the stream ended before the answer did")

    def _check_status(self, resp: httpx.Response, read: bool = False) -> None:
        status = resp.status_code
        if 200 <= status < 300:
            return
        if read:
            resp.read()
        what = f"HTTP {status}: {server_message(resp)}"
        if status in (408, 429) or status >= 500:
            raise Retryable(what, retry_after_seconds(resp.headers.get("retry-after")))
        where = f"LLM request to {self._url}"
        if status in (400, 413, 422) and _OVERFLOW.search(what):
            raise ContextOverflowError(
                f"{where} was refused as too long for the model's window ({what}); lower "
                "--max-context-tokens or set SEMSEARCH_LLM_CONTEXT_TOKENS to the server's "
                "real window")
        if status in (401, 403):
            raise BackendError(f"{where} was refused ({what}); check SEMSEARCH_LLM_API_KEY")
        if status == 404 or _UNKNOWN_MODEL.search(what):
            raise LlmModelNotFoundError(f"{where} failed ({what}); check SEMSEARCH_LLM_MODEL "
                                        f"{self._model!r} and SEMSEARCH_LLM_BASE_URL")
        raise BackendError(f"{where} was rejected ({what})")

    def _usage(self, usage: Any, messages: Sequence[ChatMessage], text: str) -> ChatUsage:
        usage = usage if isinstance(usage, dict) else {}
        prompt = token_count(usage.get("prompt_tokens"))
        completion = token_count(usage.get("completion_tokens"))
        if prompt is not None and completion is not None:
            return ChatUsage(prompt, completion)
        return ChatUsage(prompt if prompt is not None else
                         sum(self._count(m.content) + 4 for m in messages),
                         completion if completion is not None else self._count(text),
                         estimated=True)

    def _record(self, usage: ChatUsage, started: float) -> None:
        self.meter.record_call(1, usage.prompt_tokens + usage.completion_tokens,
                               time.perf_counter() - started)


def _read_event(event: Any, final: dict[str, Any]) -> str:
    """One chunk of a stream: its text, with the model, usage and finish reason noted in
    ``final``. Raises one of ``MALFORMED`` on a chunk of the wrong shape."""
    if "error" in event:
        raise Retryable(f"the server reported an error mid-stream: {str(event['error'])[:200]}")
    if event.get("model"):
        final["model"] = event["model"]
    if event.get("usage"):
        final["usage"] = event["usage"]
    text = ""
    for choice in event.get("choices") or []:
        if choice.get("finish_reason"):
            final["finish_reason"] = choice["finish_reason"]
        content = (choice.get("delta") or {}).get("content")
        if isinstance(content, str):
            text += content
    return text


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, httpx.TimeoutException):
        return f"timed out after {timeout:g}s (timeout)"
    if isinstance(exc, httpx.TransportError):
        return f"connection error ({type(exc).__name__}: {exc})"
    return str(exc)

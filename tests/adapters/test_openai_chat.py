"""The OpenAI-compatible LLM client against a real loopback server speaking the
chat-completions wire format: whole and streamed answers, usage, and every fault path
(429 with Retry-After, 5xx, garbled bodies, dropped connections, timeouts, cut streams,
401, unknown models, prompts over the window)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from semsearch.adapters.llm.openai_chat import LlmModelNotFoundError, OpenAICompatibleChat
from semsearch.core.prompt import build_messages
from semsearch.core.types import Completion
from semsearch.errors import BackendError, ContextOverflowError, InputError
from tests.default_path import modules_loaded_by_default
from tests.fakes.chat_server import FakeChatServer

MESSAGES = build_messages("What helps bones?", [
    (1, "d1", "Vitamin D", "Vitamin D helps the gut absorb calcium. More text."),
    (2, "d2", "", "Calcium is the main mineral of bone.")])
EXPECTED = "Vitamin D helps the gut absorb calcium. [1] Calcium is the main mineral of bone. [2]"


@pytest.fixture
def server() -> Iterator[FakeChatServer]:
    with FakeChatServer(api_key="sk-llm") as srv:
        yield srv


def client(server: FakeChatServer, sleeps: list[float] | None = None,
           **kw: Any) -> OpenAICompatibleChat:
    options: dict[str, Any] = {"base_url": server.url, "model": "fake-chat",
                               "api_key": "sk-llm", "context_window": 4096,
                               "count_tokens": lambda t: len(t) // 4,
                               "sleep": (sleeps.append if sleeps is not None else
                                         lambda s: None)}
    options.update(kw)
    return OpenAICompatibleChat(**options)


def streamed(llm: OpenAICompatibleChat) -> tuple[list[str], Completion]:
    pieces: list[str] = []
    final = None
    for item in llm.stream(MESSAGES, 100):
        if isinstance(item, Completion):
            final = item
        else:
            pieces.append(item)
    assert final is not None
    return pieces, final


def test_whole_answer_with_usage_and_identity(server: FakeChatServer) -> None:
    llm = client(server)
    out = llm.complete(MESSAGES, 100)
    assert out.text == EXPECTED and out.model == "fake-chat" and out.finish_reason == "stop"
    assert not out.usage.estimated and out.usage.completion_tokens == 16
    (req,) = server.requests
    assert req.headers["authorization"] == "Bearer sk-llm"
    assert req.body["max_tokens"] == 100 and req.body["temperature"] == 0.0
    assert [m["role"] for m in req.messages] == ["system", "user"]
    assert llm.identity["model"] == "fake-chat" and llm.identity["endpoint"].endswith("/v1")
    snap = llm.meter.snapshot()
    assert (snap.calls, snap.tokens) == (1, out.usage.prompt_tokens + 16)


def test_stream_yields_pieces_then_the_completion(server: FakeChatServer) -> None:
    pieces, final = streamed(client(server))
    assert len(pieces) > 5 and "".join(pieces) == EXPECTED == final.text
    assert final.usage.completion_tokens == 16 and not final.usage.estimated
    assert server.requests[0].body["stream"] is True


def test_usage_is_estimated_when_the_server_sends_none() -> None:
    with FakeChatServer(send_usage=False) as srv:
        llm = client(srv, api_key=None)
        for out in (llm.complete(MESSAGES, 100), streamed(llm)[1]):
            assert out.usage.estimated and out.usage.completion_tokens == len(EXPECTED) // 4
            assert out.usage.prompt_tokens > 0


@pytest.mark.parametrize("fault", ["429", "500", "503", "malformed", "drop"])
def test_transient_faults_are_retried(server: FakeChatServer, fault: str) -> None:
    sleeps: list[float] = []
    llm = client(server, sleeps)
    server.script(fault, fault)
    assert llm.complete(MESSAGES, 100).text == EXPECTED
    assert len(server.requests) == 3 and len(sleeps) == 2
    snap = llm.meter.snapshot()
    assert (snap.calls, snap.errors, snap.retries) == (1, 2, 2)
    if fault == "429":
        assert sleeps == [1.0, 1.0]  # the server's Retry-After, not our backoff


@pytest.mark.parametrize("fault", ["429", "503", "drop", "malformed"])
def test_a_stream_is_retried_until_its_first_piece(server: FakeChatServer, fault: str) -> None:
    server.script(fault)
    _, final = streamed(client(server))
    assert final.text == EXPECTED and len(server.requests) == 2


def test_a_stream_cut_after_text_is_an_error_saying_how_far_it_got(
        server: FakeChatServer) -> None:
    server.script("cut")
    llm = client(server)
    got: list[str] = []
    with pytest.raises(BackendError, match="cut after 2 pieces"):
        for item in llm.stream(MESSAGES, 100):
            got.append(str(item))
    assert len(got) == 2 and len(server.requests) == 1  # never silently re-asked


def test_retries_give_up_with_the_last_reason(server: FakeChatServer) -> None:
    server.script("500", "500", "500")
    with pytest.raises(BackendError, match=r"failed after 3 attempts: HTTP 500"):
        client(server, max_retries=2).complete(MESSAGES, 100)


def test_a_timeout_is_retried_then_reported() -> None:
    with FakeChatServer() as srv:
        srv.script(("slow", 2.0), ("slow", 2.0))
        llm = client(srv, api_key=None, timeout=0.3, max_retries=1)
        with pytest.raises(BackendError, match=r"timed out after 0.3s"):
            llm.complete(MESSAGES, 100)
        assert len(srv.requests) == 2


@pytest.mark.parametrize(("fault", "error", "says"), [
    ("401", BackendError, "SEMSEARCH_LLM_API_KEY"),
    ("unknown_model", LlmModelNotFoundError, "SEMSEARCH_LLM_MODEL"),
    ("overflow", ContextOverflowError, "SEMSEARCH_LLM_CONTEXT_TOKENS"),
])
def test_what_a_retry_cannot_fix_fails_at_once(server: FakeChatServer, fault: str,
                                                error: type[Exception], says: str) -> None:
    for stream in (False, True):
        server.script(fault)
        llm = client(server)
        with pytest.raises(error, match=says):
            if stream:
                streamed(llm)
            else:
                llm.complete(MESSAGES, 100)
    assert len(server.requests) == 2  # one each, no retry


def test_an_unknown_model_name_is_a_clear_error(server: FakeChatServer) -> None:
    with pytest.raises(LlmModelNotFoundError, match="'nope'"):
        client(server, model="nope").complete(MESSAGES, 10)


@pytest.mark.parametrize(("url", "model"), [("ftp://x/v1", "m"), ("http://", "m"),
                                            ("http://127.0.0.1:1/v1", "")])
def test_bad_settings_are_refused_before_any_request(url: str, model: str) -> None:
    with pytest.raises(InputError):
        OpenAICompatibleChat(base_url=url, model=model, api_key=None, context_window=100,
                             count_tokens=len)


def test_the_default_path_loads_no_llm_client(tmp_path: Path) -> None:
    assert modules_loaded_by_default(tmp_path, "m.startswith('semsearch.adapters.llm')") == "[]"

"""Answers with citations through the library, on the real embedding model and a real
store: extractive with no LLM, generated through a scripted chat-completions server.

The scripted model lets a test control what "the LLM" writes, including the worst case: a
model that obeys a retrieved document and recites its instructions and invents sources."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from semsearch.adapters.sources.files import iter_documents
from semsearch.config import Settings
from semsearch.core.citations import LEAK_NOTE
from semsearch.core.filters import parse_filter
from semsearch.core.prompt import SYSTEM_PROMPT
from semsearch.core.types import Document
from semsearch.errors import ContextOverflowError, InputError, NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.services.ask import AskRequest, AskResult, ask, ask_stream
from semsearch.services.ingest import index_documents
from semsearch.services.quickstart import sample_dir
from semsearch.wiring import open_engine
from tests.fakes.chat_server import FakeChatServer, obedient
from tests.unit.test_answer_checks import INJECTIONS

VEG = "how do I keep vegetables fresh"


def docs() -> list[Document]:
    return list(iter_documents(sample_dir()))


def llm_engine(monkeypatch: pytest.MonkeyPatch, server: FakeChatServer, **env: str) -> Engine:
    monkeypatch.setenv("SEMSEARCH_LLM", "openai-compatible")
    monkeypatch.setenv("SEMSEARCH_LLM_BASE_URL", server.url)
    monkeypatch.setenv("SEMSEARCH_LLM_MODEL", "fake-chat")
    for key, value in env.items():
        monkeypatch.setenv(f"SEMSEARCH_{key.upper()}", value)
    return open_engine(Settings())


@pytest.fixture
def fake() -> Iterator[FakeChatServer]:
    with FakeChatServer() as srv:
        yield srv


def assert_citations_hold(result: AskResult, corpus: dict[str, str]) -> None:
    numbers = {s.number for s in result.sources}
    assert set(result.cited) <= numbers
    for marker in __import__("re").findall(r"\[(\d+)\]", result.answer):
        assert int(marker) in numbers, (marker, result.answer)
    for s in result.sources:  # every source is stored text, at the spans it names
        assert s.doc_id in corpus
        for start, end in s.spans:
            assert corpus[s.doc_id][start:end] in s.text


def test_extractive_answer_offline(engine: Engine) -> None:
    index_documents(engine, "s", docs())
    result = ask(engine, AskRequest(VEG, "s"))
    corpus = {d.id: d.text for d in docs()}
    assert result.kind == "extractive" and result.model["provider"] == "extractive"
    assert result.sources[0].doc_id == "storing-vegetables.md"
    assert result.cited and result.cited[0] == 1
    assert_citations_hold(result, corpus)
    for s in result.supporting:  # each sentence is the document's text at its span
        assert corpus[s["doc_id"]][s["span"][0]:s["span"][1]] == s["sentence"]
    assert result.budget["context_tokens"] == engine.settings.ask_context_tokens
    assert 0 < result.budget["used_tokens"] <= result.budget["context_tokens"]
    assert set(result.timings) == {"retrieve", "generate", "total"}
    out = result.to_dict()
    assert out["extractive"] is True and out["citations"][0]["n"] == result.cited[0]


def test_generated_answer_with_usage_cost_and_model(monkeypatch: pytest.MonkeyPatch,
                                                    settings: Settings,
                                                    fake: FakeChatServer) -> None:
    eng = llm_engine(monkeypatch, fake, llm_price_per_mtok_input="2",
                     llm_price_per_mtok_output="10")
    try:
        index_documents(eng, "s", docs())
        result = ask(eng, AskRequest(VEG, "s", k=4))
    finally:
        eng.close()
    assert result.kind == "generated" and result.cited[:1] == [1]
    assert_citations_hold(result, {d.id: d.text for d in docs()})
    (req,) = fake.requests
    assert req.messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert '<source id="1" doc="storing-vegetables.md"' in req.messages[1]["content"]
    u = result.usage
    assert not u.estimated and u.prompt_tokens > 0 and u.completion_tokens > 0
    assert result.cost_usd == pytest.approx((u.prompt_tokens * 2 + u.completion_tokens * 10)
                                            / 1e6)
    assert result.model == {"provider": "openai-compatible", "model": "fake-chat",
                            "endpoint": fake.url.removeprefix("http://"),
                            "served_model": "fake-chat"}
    assert len(result.sources) <= 4


def test_streamed_pieces_add_up_to_the_answer(monkeypatch: pytest.MonkeyPatch,
                                              settings: Settings,
                                              fake: FakeChatServer) -> None:
    eng = llm_engine(monkeypatch, fake)
    try:
        index_documents(eng, "s", docs())
        events = list(ask_stream(eng, AskRequest(VEG, "s")))
    finally:
        eng.close()
    pieces = [text for kind, text in events if kind == "token"]
    ((_, result),) = [e for e in events if e[0] == "done"]
    assert isinstance(result, AskResult) and len(pieces) > 3
    assert "".join(pieces).strip() == result.answer


def test_retrieved_instructions_change_nothing_and_forge_nothing(
        monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    evil = [Document(f"evil-{i}", f"Storing vegetables: {text}", "Vegetable storage tips")
            for i, text in enumerate(INJECTIONS)]
    with FakeChatServer(reply=obedient) as srv:
        eng = llm_engine(monkeypatch, srv)
        try:
            index_documents(eng, "s", docs() + evil)
            result = ask(eng, AskRequest(VEG + " storage tips", "s"))
            streamed = [t for k, t in ask_stream(eng, AskRequest(VEG + " storage tips", "s"))
                        if k == "token"]
        finally:
            eng.close()
    corpus = {d.id: d.text for d in docs() + evil}
    assert any(s.doc_id.startswith("evil-") for s in result.sources)  # they were retrieved
    for req in srv.requests:  # the instructions the model got never changed
        assert req.messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
        user = req.messages[1]["content"]
        for token in ("<|im_start|>", "<|im_end|>", "[INST]", "<<SYS>>", "<system>",
                      '<source id="99"', "[7]", "[12, 13]"):
            assert token not in user, token
        assert user.count("</source>") == len(result.sources)
    # The obedient model recited its instructions and cited [42] and [7]: neither got out.
    assert_citations_hold(result, corpus)
    assert 42 in result.invalid_citations and result.withheld >= 1 and LEAK_NOTE in result.answer
    assert "numbered sources in the user's message" not in result.answer
    assert "numbered sources in the user's message" not in "".join(streamed)
    assert "[42]" not in "".join(streamed)


def test_the_budget_fits_the_window_or_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                  settings: Settings) -> None:
    # The fake refuses prompts over 700 of its tokens (4 characters each); the window the
    # client is told is 700, so packing must keep the whole prompt under it.
    with FakeChatServer(context_window=700) as srv:
        eng = llm_engine(monkeypatch, srv, llm_context_tokens="700",
                         llm_max_answer_tokens="200")
        try:
            index_documents(eng, "s", docs())
            result = ask(eng, AskRequest(VEG, "s"))
            assert result.budget["window"] == 700 and result.budget["answer_tokens"] == 200
            assert result.budget["context_tokens"] < 700 - 200
            assert result.budget["used_tokens"] <= result.budget["context_tokens"]
            assert result.budget["over_budget"] > 0 and result.usage.prompt_tokens <= 700
            asked = len(srv.requests)
            with pytest.raises(ContextOverflowError, match="SEMSEARCH_LLM_MAX_ANSWER_TOKENS"):
                ask(eng, AskRequest("why " * 600 + "?", "s"))
            assert len(srv.requests) == asked  # refused before any request
        finally:
            eng.close()


def test_near_duplicates_and_chunks_of_one_document(engine: Engine) -> None:
    veg = next(d for d in docs() if d.id == "storing-vegetables.md")
    copies = [Document(f"mirror-{i}.md", veg.text, veg.title) for i in range(3)]
    long = Document("long.md", " ".join(
        f"Paragraph {i} on keeping vegetables fresh: store carrots and beets cold and damp, "
        f"potatoes dark and dry, and herbs like cut flowers in water number {i}."
        for i in range(14)), "A long guide to storing vegetables")
    index_documents(engine, "s", [veg, *copies, long])
    result = ask(engine, AskRequest(VEG, "s", k=8))
    ids = [s.doc_id for s in result.sources]
    assert sum(i == veg.id or i.startswith("mirror-") for i in ids) == 1
    assert result.budget["near_duplicates"] >= 3
    (merged,) = [s for s in result.sources if s.doc_id == "long.md"]
    starts = [a for a, _ in merged.spans]
    assert len(merged.chunk_ids) >= 2 and starts == sorted(starts)
    assert_citations_hold(result, {d.id: d.text for d in [veg, *copies, long]})


def test_no_sources_no_model_call(monkeypatch: pytest.MonkeyPatch, settings: Settings,
                                  fake: FakeChatServer) -> None:
    eng = llm_engine(monkeypatch, fake)
    try:
        index_documents(eng, "s", docs())
        result = ask(eng, AskRequest(VEG, "s", filter=parse_filter({"type": "pdf"})))
        assert result.kind == "no_sources" and result.sources == [] and not fake.requests
        with pytest.raises(NotFoundError):
            ask(eng, AskRequest(VEG, "missing"))
        for bad in (AskRequest("  ", "s"), AskRequest("x" * 5000, "s"),
                    AskRequest(VEG, "s", k=0), AskRequest(VEG, "s", max_context_tokens=10),
                    AskRequest("bad \ud800 text", "s")):
            with pytest.raises(InputError):
                ask(eng, bad)
        assert not fake.requests
    finally:
        eng.close()

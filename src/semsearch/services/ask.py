"""Answers with citations over a collection (retrieval-augmented generation).

One path for every caller (CLI, HTTP, streaming or not):

1. retrieve: hybrid search for chunks (not documents), ranked;
2. assemble (``core.context``): near-duplicates dropped, packed in rank order into a token
   budget that leaves the model's window room for the instructions, the question and the
   answer, then merged per document in document order and numbered;
3. generate: with an LLM configured, the prompt of ``core.prompt`` (sources quoted as data)
   and the model's answer passed through ``core.citations.AnswerGuard`` as it streams; with
   none, an extractive answer: the source sentences closest to the question, each cited.

The answer never cites a number that names no source, and every source it lists is a
chunk the store holds, with the spans of its document it came from."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from semsearch.core.chunking import split_sentences
from semsearch.core.citations import AnswerGuard
from semsearch.core.context import (
    GAP,
    PackedContext,
    Passage,
    Source,
    TokenEstimate,
    pack,
)
from semsearch.core.filters import Filter
from semsearch.core.prompt import SYSTEM_PROMPT, build_messages, prompt_overhead
from semsearch.core.types import ChatUsage, Completion, InputType, Mode
from semsearch.core.unicode import require_unicode
from semsearch.errors import ContextOverflowError, InputError
from semsearch.runtime.engine import Engine
from semsearch.services.search import MAX_K, SearchRequest, search

MAX_QUESTION_CHARS = 4000
MAX_ASK_K = 100  # chunks packed at most
MIN_CONTEXT_TOKENS = 64  # below this no source fits: refuse rather than answer from nothing
FRAMING_TOKENS = 16  # the chat template's role markers around two messages
SAFETY = 0.95  # the token estimate is for another tokenizer: keep a margin of the window
EXTRACTIVE_SENTENCES = 3
EXTRACTIVE_CANDIDATES = 64
EXTRACTIVE_MIN_WORDS = 4
NO_SOURCES = "No document in the collection matches the question, so there is nothing to " \
             "answer from."

Kind = Literal["generated", "extractive", "no_sources"]


@dataclass(frozen=True)
class AskRequest:
    question: str
    collection: str
    k: int | None = None  # chunks to pack at most; default SEMSEARCH_ASK_K
    max_context_tokens: int | None = None  # default SEMSEARCH_ASK_CONTEXT_TOKENS
    mode: Mode = Mode.HYBRID
    filter: Filter = field(default_factory=Filter)

    def validate(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise InputError("the question is empty")
        require_unicode(self.question, "the question")
        if len(self.question) > MAX_QUESTION_CHARS:
            raise InputError(f"the question has {len(self.question):,} characters; the "
                             f"limit is {MAX_QUESTION_CHARS:,}")
        if self.k is not None and not 1 <= self.k <= MAX_ASK_K:
            raise InputError(f"k must be between 1 and {MAX_ASK_K}, got {self.k}")
        if self.max_context_tokens is not None and self.max_context_tokens < MIN_CONTEXT_TOKENS:
            raise InputError(f"max_context_tokens must be at least {MIN_CONTEXT_TOKENS}, got "
                             f"{self.max_context_tokens}")


@dataclass
class AskResult:
    answer: str
    kind: Kind
    sources: list[Source]
    cited: list[int]
    invalid_citations: list[int]
    withheld: int  # runs of the instructions the model recited, cut out
    model: dict[str, str]
    usage: ChatUsage
    cost_usd: float
    budget: dict[str, Any]
    timings: dict[str, float]
    version: str
    supporting: list[dict[str, Any]] = field(default_factory=list)  # extractive only

    def to_dict(self) -> dict[str, Any]:
        cited = set(self.cited)
        by_number = {s.number: s for s in self.sources}
        return {
            "answer": self.answer, "kind": self.kind, "extractive": self.kind == "extractive",
            "citations": [{"n": n, "doc_id": by_number[n].doc_id,
                           "chunk_ids": list(by_number[n].chunk_ids),
                           "spans": [list(sp) for sp in by_number[n].spans]}
                          for n in self.cited],
            "sources": [{**s.to_dict(), "cited": s.number in cited} for s in self.sources],
            "invalid_citations": {"count": len(self.invalid_citations),
                                  "numbers": self.invalid_citations},
            "withheld": self.withheld, "supporting": self.supporting,
            "model": self.model,
            "usage": {"prompt_tokens": self.usage.prompt_tokens,
                      "completion_tokens": self.usage.completion_tokens,
                      "total_tokens": self.usage.prompt_tokens + self.usage.completion_tokens,
                      "estimated": self.usage.estimated},
            "cost_usd": round(self.cost_usd, 8), "budget": self.budget,
            "timings_ms": {k: round(v * 1000, 3) for k, v in self.timings.items()},
            "version": self.version}


@dataclass(frozen=True)
class Prepared:
    """Everything before generation: what the model will be shown."""

    request: AskRequest
    context: PackedContext
    budget: dict[str, Any]
    version: str
    retrieve_seconds: float


def context_budget(engine: Engine, req: AskRequest, count: TokenEstimate) -> dict[str, Any]:
    """The tokens sources may use, and how they were found: the asked limit, or less when
    the model's window must also hold the instructions, the question and the answer."""
    s = engine.settings
    limit = req.max_context_tokens or s.ask_context_tokens
    if engine.llm is None:
        return {"context_tokens": limit, "limit": limit}
    window = engine.llm.context_window
    answer = s.llm_max_answer_tokens
    prompt = count(prompt_overhead(req.question)) + FRAMING_TOKENS
    room = int(window * SAFETY) - answer - prompt
    if room < MIN_CONTEXT_TOKENS:
        raise ContextOverflowError(
            f"the question and instructions (~{prompt} tokens) and the {answer} tokens kept "
            f"for the answer leave {max(room, 0)} of the model's {window}-token window for "
            f"sources (at least {MIN_CONTEXT_TOKENS} are needed); shorten the question, lower "
            "SEMSEARCH_LLM_MAX_ANSWER_TOKENS or set SEMSEARCH_LLM_CONTEXT_TOKENS to the "
            "model's real window")
    return {"context_tokens": min(limit, room), "limit": limit, "window": window,
            "answer_tokens": answer, "prompt_tokens": prompt}


def prepare(engine: Engine, req: AskRequest) -> Prepared:
    req.validate()
    started = time.perf_counter()
    count = TokenEstimate(engine.embedder.tokenizer)
    budget = context_budget(engine, req, count)
    k = req.k or engine.settings.ask_k
    found = search(engine, req.collection, SearchRequest(
        query=req.question, mode=req.mode, k=min(3 * k, MAX_K), filter=req.filter,
        group=False))
    passages = [Passage(h.doc_id, h.chunk_id, h.ordinal, h.start, h.end, h.text, h.title,
                        h.score, h.metadata) for h in found.hits]
    packed = pack(passages, budget["context_tokens"], count, max_chunks=k)
    budget = {**budget, **packed.budget_dict()}
    return Prepared(req, packed, budget, found.version, time.perf_counter() - started)


# -- answering ---------------------------------------------------------------------------

Event = tuple[Literal["token"], str] | tuple[Literal["done"], AskResult]


def ask(engine: Engine, req: AskRequest) -> AskResult:
    """The whole answer at once (a non-streaming request to the LLM)."""
    prepared = prepare(engine, req)
    for event in _answer(engine, prepared, stream=False):
        if event[0] == "done":
            return event[1]
    raise AssertionError("an answer always ends with its result")


def ask_stream(engine: Engine, req: AskRequest) -> Iterator[Event]:
    """Checked pieces of the answer as the model writes them, then the result. Retrieval
    runs (and refuses bad input) before the first piece."""
    prepared = prepare(engine, req)
    return _answer(engine, prepared, stream=True)


def _answer(engine: Engine, prepared: Prepared, stream: bool) -> Iterator[Event]:
    """Yields ("token", text) pieces (streaming only), then ("done", result)."""
    sources = prepared.context.sources
    tel = engine.telemetry
    attrs = {"semsearch.collection": prepared.request.collection}
    started = time.perf_counter()
    if not sources:
        yield "done", _result(engine, prepared, NO_SOURCES, "no_sources", AnswerGuard(
            frozenset(), SYSTEM_PROMPT), ChatUsage(), {"provider": "none"}, started)
        return
    if engine.llm is None:
        with tel.span("semsearch.ask.extract", attrs):
            text, supporting, usage = _extract(engine, prepared)
        guard = AnswerGuard(frozenset(s.number for s in sources), SYSTEM_PROMPT)
        checked = guard.check(text)
        if stream:
            yield "token", checked
        model = {"provider": "extractive", "model": engine.embedder.identity.model}
        result = _result(engine, prepared, checked, "extractive", guard, usage, model, started)
        result.supporting = supporting
        yield "done", result
        return
    llm = engine.llm
    messages = build_messages(prepared.request.question,
                              [(s.number, s.doc_id, s.title, s.text) for s in sources])
    max_tokens = engine.settings.llm_max_answer_tokens
    guard = AnswerGuard(frozenset(s.number for s in sources), SYSTEM_PROMPT)
    with tel.span("semsearch.ask.generate", attrs):
        if stream:
            final: Completion | None = None
            shown: list[str] = []
            for piece in llm.stream(messages, max_tokens):
                if isinstance(piece, Completion):
                    final = piece
                elif checked := guard.feed(piece):
                    shown.append(checked)
                    yield "token", checked
            assert final is not None  # the provider ends every stream with its Completion
            if tail := guard.finish():
                shown.append(tail)
                yield "token", tail
            completion = final
            text = "".join(shown)
        else:
            completion = llm.complete(messages, max_tokens)
            text = guard.check(completion.text)
    model = {**llm.identity, "served_model": completion.model}
    yield "done", _result(engine, prepared, text, "generated", guard, completion.usage, model,
                          started)


def _result(engine: Engine, prepared: Prepared, text: str, kind: Kind, guard: AnswerGuard,
            usage: ChatUsage, model: dict[str, str], started: float) -> AskResult:
    s = engine.settings
    cost = 0.0
    if kind == "generated":
        cost = (usage.prompt_tokens * s.llm_price_per_mtok_input
                + usage.completion_tokens * s.llm_price_per_mtok_output) / 1e6
    generate = time.perf_counter() - started
    timings = {"retrieve": prepared.retrieve_seconds, "generate": generate,
               "total": prepared.retrieve_seconds + generate}
    return AskResult(answer=text.strip(), kind=kind, sources=prepared.context.sources,
                     cited=list(guard.cited), invalid_citations=list(guard.invalid),
                     withheld=guard.leaks, model=model, usage=usage, cost_usd=cost,
                     budget=prepared.budget, timings=timings, version=prepared.version)


# -- extractive answers ------------------------------------------------------------------

def _extract(engine: Engine, prepared: Prepared) -> tuple[str, list[dict[str, Any]],
                                                          ChatUsage]:
    """The source sentences most similar to the question (the configured embedder, through
    the cache), each cited; no model writes anything."""
    candidates: list[tuple[Source, str, int, int]] = []  # source, sentence, doc start, end
    for source in prepared.context.sources:
        for sentence, start, end in _sentences(source):
            if len(sentence.split()) >= EXTRACTIVE_MIN_WORDS:
                candidates.append((source, sentence, start, end))
    candidates = candidates[:EXTRACTIVE_CANDIDATES]
    if not candidates:  # only very short sources: quote the best one whole
        best = prepared.context.sources[0]
        candidates = [(best, best.text, best.spans[0][0], best.spans[-1][1])]
    embedder = engine.embedder
    before = embedder.embedder.meter.snapshot()
    question = embedder.embed([prepared.request.question], InputType.QUERY)[0]
    vectors = embedder.embed([c[1] for c in candidates], InputType.PASSAGE)
    spent = embedder.embedder.meter.snapshot().minus(before)
    scores = vectors @ question
    order = [int(i) for i in np.argsort(-scores, kind="stable")[:EXTRACTIVE_SENTENCES]]
    supporting = [{"n": candidates[i][0].number, "doc_id": candidates[i][0].doc_id,
                   "sentence": candidates[i][1], "span": [candidates[i][2], candidates[i][3]],
                   "score": round(float(scores[i]), 4)} for i in order]
    text = " ".join(f"{' '.join(candidates[i][1].split())} [{candidates[i][0].number}]"
                    for i in order)
    return text, supporting, ChatUsage(prompt_tokens=spent.tokens)


def _sentences(source: Source) -> Iterator[tuple[str, int, int]]:
    """A source's sentences with their character spans in the document: the merged text
    is its spans' texts joined by ``GAP``, so each piece maps back to one span."""
    pos = 0
    text = source.text
    for s, e in source.spans:
        length = e - s if e > s else len(text) - pos
        piece = text[pos:pos + length]
        for a, b in split_sentences(piece):
            yield piece[a:b], s + a, s + b
        pos += length + len(GAP)

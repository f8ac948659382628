"""``POST /ask``: an answer with citations, whole or streamed as server-sent events.

A stream sends ``event: token`` pieces (``{"text": ...}``, already checked: no citation to
a missing source, no recital of the instructions), then one ``event: done`` with the same
object the non-streaming form returns. Everything that can be refused (bad input, unknown
collection, no room in the window) is refused before the stream starts, as an ordinary
error response; a failure after it started (the LLM's stream cut) ends it with
``event: error`` carrying the usual error object."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from semsearch.api.auth import require
from semsearch.api.errors import status_of
from semsearch.api.routes import ERRORS, EngineDep, Who, _check_texts, _metrics
from semsearch.api.schemas import ModeName
from semsearch.core.filters import parse_filter
from semsearch.core.types import Mode
from semsearch.errors import SemsearchError
from semsearch.services.ask import (
    MAX_ASK_K,
    MAX_QUESTION_CHARS,
    MIN_CONTEXT_TOKENS,
    AskRequest,
    AskResult,
    ask_stream,
)

router = APIRouter(responses=ERRORS)


class AskBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS)
    collection: str
    k: int | None = Field(default=None, ge=1, le=MAX_ASK_K,
                          description="chunks to pack at most")
    max_context_tokens: int | None = Field(default=None, ge=MIN_CONTEXT_TOKENS, le=1_000_000)
    mode: ModeName = "hybrid"
    filter: dict[str, Any] | None = None
    stream: bool = False


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post("/ask", tags=["ask"], response_model=None)
def ask(body: AskBody, request: Request, engine: EngineDep,
        who: Who) -> dict[str, Any] | StreamingResponse:
    """Answer a question from a collection, citing its documents as [n]; with
    ``"stream": true``, as server-sent events (``token`` pieces, then ``done``)."""
    require(who, body.collection, "read")
    _check_texts(request, engine, [body.question], "question", param="question")
    req = AskRequest(question=body.question, collection=body.collection, k=body.k,
                     max_context_tokens=body.max_context_tokens, mode=Mode(body.mode),
                     filter=parse_filter(body.filter))
    metrics = _metrics(request)
    events = ask_stream(engine, req)  # retrieval and every refusal happen here

    def observe(result: AskResult) -> None:
        metrics.observe_answer(result.kind, result.timings, result.usage.prompt_tokens,
                               result.usage.completion_tokens, result.cost_usd,
                               len(result.invalid_citations), result.withheld)

    if not body.stream:
        for kind, value in events:
            if kind == "done":
                assert isinstance(value, AskResult)
                observe(value)
                return value.to_dict()
        raise AssertionError("an answer always ends with its result")

    def sse() -> Iterator[str]:
        try:
            for kind, value in events:
                if kind == "done":
                    assert isinstance(value, AskResult)
                    observe(value)
                    yield _sse("done", value.to_dict())
                else:
                    yield _sse("token", {"text": value})
        except SemsearchError as exc:
            metrics.errors.labels(code=exc.code).inc()
            yield _sse("error", {"error": {"message": str(exc), "code": exc.code,
                                           "status": status_of(exc)}})

    return StreamingResponse(sse(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

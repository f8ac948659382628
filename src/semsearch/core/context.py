"""Context assembly for retrieval-augmented answers: from ranked chunks to numbered sources
that fit a token budget.

The failures this prevents are the ones hand-built RAG meets first: near-identical chunks
(mirrored documents, boilerplate) filling the window with one fact, a document's chunks
arriving out of order and repeating their overlaps, and a context cut mid-chunk because
the budget was checked after the fact. Pure: tokens are counted by a function handed in."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from semsearch.core.chunking import Tokenizer

_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")
# Tokens a source's delimiters and header cost in the prompt (<source id=".." doc="..">).
SOURCE_OVERHEAD_TOKENS = 24
# A chunk whose word 3-gram set overlaps a better-ranked one's this much (Jaccard), or is
# this much contained in it, says the same thing: only the better-ranked one is kept.
NEAR_DUPLICATE_JACCARD = 0.8
NEAR_DUPLICATE_CONTAINMENT = 0.9
GAP = " ... "  # between non-adjacent chunks of one document in a merged source


@dataclass(frozen=True)
class Passage:
    """One retrieved chunk, in rank order."""

    doc_id: str
    chunk_id: str
    ordinal: int
    start: int
    end: int
    text: str
    title: str = ""
    score: float = 0.0
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Source:
    """A document's packed chunks, merged in document order, under one citation number.
    ``spans`` are the character ranges of the document the text covers."""

    number: int
    doc_id: str
    title: str
    chunk_ids: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]
    text: str
    tokens: int
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.number, "doc_id": self.doc_id, "title": self.title,
                "chunk_ids": list(self.chunk_ids), "spans": [list(s) for s in self.spans],
                "text": self.text, "tokens": self.tokens, "metadata": dict(self.metadata)}


@dataclass(frozen=True)
class PackedContext:
    sources: list[Source]
    budget: int  # tokens the sources could use
    used: int  # tokens they use (estimated, delimiters included)
    retrieved: int  # chunks retrieval returned
    near_duplicates: int  # dropped as near-duplicates of a better-ranked chunk
    over_budget: int  # dropped because they did not fit
    truncated: bool = False  # the best chunk alone was over the budget and was cut

    def budget_dict(self) -> dict[str, Any]:
        return {"context_tokens": self.budget, "used_tokens": self.used,
                "retrieved_chunks": self.retrieved, "near_duplicates": self.near_duplicates,
                "over_budget": self.over_budget, "truncated": self.truncated}


class TokenEstimate:
    """Tokens of a text for an LLM whose tokenizer is not here (a remote server): the
    larger of the embedding model's WordPiece count and one token per 3.6 characters,
    which over-counts English for GPT-, Llama- and SmolLM-style BPE vocabularies, so a
    packed context fits their windows."""

    CHARS_PER_TOKEN = 3.6

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> int:
        if not text:
            return 0
        return max(self._tokenizer.count_tokens(text),
                   math.ceil(len(text) / self.CHARS_PER_TOKEN))


def shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def near_duplicate(candidate: frozenset[tuple[str, ...]],
                   kept: frozenset[tuple[str, ...]]) -> bool:
    """Whether ``candidate`` adds next to nothing to ``kept``: nearly the same text, or
    mostly contained in it. A longer text that contains ``kept`` and more is not one."""
    if not candidate or not kept:
        return False
    common = len(candidate & kept)
    return (common / len(candidate | kept) >= NEAR_DUPLICATE_JACCARD
            or common / len(candidate) >= NEAR_DUPLICATE_CONTAINMENT)


def drop_near_duplicates(passages: Sequence[Passage]) -> tuple[list[Passage], int]:
    """Passages in rank order without those that repeat a better-ranked one."""
    kept: list[Passage] = []
    seen: list[frozenset[tuple[str, ...]]] = []
    for p in passages:
        sh = shingles(p.text)
        if any(near_duplicate(sh, other) for other in seen):
            continue
        kept.append(p)
        seen.append(sh)
    return kept, len(passages) - len(kept)


def merge_in_order(passages: Sequence[Passage]) -> tuple[str, tuple[tuple[int, int], ...]]:
    """One document's passages as one text in document order. Overlapping or touching
    chunks (the chunker overlaps neighbours) join without repeating the overlap; a gap
    between them is marked with an ellipsis."""
    ordered = sorted(passages, key=lambda p: (p.start, p.ordinal))
    parts: list[str] = []
    spans: list[list[int]] = []
    for p in ordered:
        if spans and p.end > p.start and p.start <= spans[-1][1]:
            cur_end = spans[-1][1]
            if p.end > cur_end:
                parts[-1] += p.text[cur_end - p.start:]
                spans[-1][1] = p.end
            continue  # a chunk inside the previous one adds nothing
        parts.append(p.text)
        spans.append([p.start, p.end])
    return GAP.join(parts), tuple((s, e) for s, e in spans)


def cut_to_tokens(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text``, cut at a word boundary, of at most ``limit`` tokens."""
    bounds = [m.end() for m in _WORD.finditer(text)]
    lo, hi = 0, len(bounds)
    while lo < hi:  # the most words that fit
        mid = (lo + hi + 1) // 2
        if count(text[:bounds[mid - 1]]) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[:bounds[lo - 1]] if lo else ""


MIN_FILL_TOKENS = 32  # leftover room worth filling with the start of the next chunk


def pack(passages: Sequence[Passage], budget: int, count: Callable[[str], int],
         max_chunks: int | None = None, *, spread: bool = True,
         fill: bool = True) -> PackedContext:
    """Near-duplicates dropped; with ``spread``, each document's best chunk first (in rank
    order), then second-best chunks, and so on, so a small budget holds more documents;
    ``max_chunks`` of those are considered; each is taken while it fits the budget (one that
    does not fit is skipped: a smaller one may still fit) and, with ``fill``, the room left
    at the end is filled with the start of the best chunk that did not fit, cut at a
    sentence or word; then grouped by document and numbered in the order of each document's
    best chunk.

    Numbers are stable: the same ranking gives the same sources under the same numbers."""
    retrieved = len(passages)
    unique, dupes = drop_near_duplicates(passages)
    if spread:
        unique = spread_documents(unique)
    if max_chunks is not None:
        unique = unique[:max_chunks]
    counted: dict[str, int] = {}

    def cost_of(text: str) -> int:
        if text not in counted:
            counted[text] = count(text)
        return counted[text]

    chosen: list[Passage] = []
    opened: set[str] = set()
    used = 0
    left_out: list[Passage] = []
    for p in unique:
        cost = cost_of(p.text) + (0 if p.doc_id in opened else
                                  SOURCE_OVERHEAD_TOKENS + cost_of(p.title))
        if used + cost <= budget:
            chosen.append(p)
            opened.add(p.doc_id)
            used += cost
        else:
            left_out.append(p)
    truncated = False
    if left_out and (fill or not chosen):  # the room left: the start of the best left out
        p = left_out[0]
        head = 0 if p.doc_id in opened else SOURCE_OVERHEAD_TOKENS + cost_of(p.title)
        room = budget - used - head
        if room >= (MIN_FILL_TOKENS if chosen else 1):
            text = cut_to_sentence(p.text, room, count)
            if text:
                chosen.append(Passage(p.doc_id, p.chunk_id, p.ordinal, p.start,
                                      p.start + len(text), text, p.title, p.score, p.metadata))
                opened.add(p.doc_id)
                used += count(text) + head
                truncated = True
                left_out = left_out[1:]
    return PackedContext(numbered(chosen, passages, count), budget, used, retrieved, dupes,
                         len(left_out), truncated)


def spread_documents(ranked: Sequence[Passage]) -> list[Passage]:
    """Each document's best chunk (in rank order), then each one's second best, and so on:
    a second chunk of a document already present is worth less than another document."""
    nth: dict[str, int] = {}
    order = []
    for rank, p in enumerate(ranked):
        nth[p.doc_id] = nth.get(p.doc_id, -1) + 1
        order.append((nth[p.doc_id], rank))
    return [ranked[rank] for _, rank in sorted(order)]


def numbered(chosen: Sequence[Passage], ranked: Sequence[Passage],
             count: Callable[[str], int]) -> list[Source]:
    """The chosen chunks as sources: one per document, numbered by the rank of its best
    chunk, its chunks merged in document order."""
    rank_of = {p.chunk_id: i for i, p in enumerate(ranked)}
    by_doc: dict[str, list[Passage]] = {}
    for p in sorted(chosen, key=lambda p: rank_of.get(p.chunk_id, 0)):
        by_doc.setdefault(p.doc_id, []).append(p)
    sources = []
    for number, (doc_id, group) in enumerate(by_doc.items(), start=1):
        text, spans = merge_in_order(group)
        sources.append(Source(number=number, doc_id=doc_id, title=group[0].title,
                              chunk_ids=tuple(p.chunk_id for p in sorted(
                                  group, key=lambda p: (p.start, p.ordinal))),
                              spans=spans, text=text, tokens=count(text),
                              metadata=group[0].metadata))
    return sources


def cut_to_sentence(text: str, limit: int, count: Callable[[str], int]) -> str:
    """The longest prefix of whole sentences within ``limit`` tokens, else of whole words."""
    words = cut_to_tokens(text, limit, count)
    ends = [m.end() for m in _SENTENCE_END.finditer(words)]
    return words[:ends[-1]].rstrip() if ends else words


def truncate_top_k(passages: Sequence[Passage], budget: int,
                   count: Callable[[str], int]) -> PackedContext:
    """The baseline context assembly is measured against: the top chunks in rank order,
    each its own source, concatenated until the budget and the last one cut there (what
    a hand-built pipeline does)."""
    sources: list[Source] = []
    used = 0
    for p in passages:
        room = budget - used - SOURCE_OVERHEAD_TOKENS
        if room <= 0:
            break
        n = count(p.text)
        text = p.text if n <= room else cut_to_tokens(p.text, room, count)
        if not text:
            break
        sources.append(Source(len(sources) + 1, p.doc_id, p.title, (p.chunk_id,),
                              ((p.start, p.start + len(text)),), text, count(text),
                              p.metadata))
        used += count(text) + SOURCE_OVERHEAD_TOKENS
    return PackedContext(sources, budget, used, len(passages), 0,
                         len(passages) - len(sources))

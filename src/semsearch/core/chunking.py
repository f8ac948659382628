"""Token-aware chunking: spans of a document that fit the embedding model's window.

The text is tokenized once with the model's own tokenizer and sentences are measured by counting
token spans (exact for cuts at whitespace), so chunking is linear in the document length; chunks
holding a mid-sentence cut are re-counted with the tokenizer. Strategies: ``sentence`` packs
whole sentences; ``paragraph`` packs whole paragraphs (blank-line separated), falling back to
sentences for a paragraph over budget; ``window`` is a sliding window of sentences. Overlap
(trailing whole sentences of the previous chunk) is carried across paragraph breaks only by
``window``; the other strategies start a new paragraph without overlap.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from semsearch.core.types import Chunk, Document
from semsearch.errors import InputError


class Tokenizer(Protocol):
    """What the chunker needs from a model's tokenizer: character spans of its tokens."""

    def token_spans(self, text: str) -> list[tuple[int, int]]: ...

    def count_tokens(self, text: str) -> int: ...

STRATEGIES = ("sentence", "paragraph", "window")
SPECIAL_TOKENS = 2  # [CLS] and [SEP]
CHUNKER_VERSION = 1  # bump when the algorithm changes the chunks it produces

_PARAGRAPH_RE = re.compile(r"\n[^\S\n]*\n\s*")
_CANDIDATE_RE = re.compile(
    r"(?P<p>[.!?]+[\"'\u201d\u2019)\]]*)(?P<w>\s+)|(?P<n>\n)[^\S\n]*(?=(?:[-*\u2022]|\d+[.)])\s)"
)
_OPENERS = "\"'\u201c\u2018([{"
_ABBREVIATIONS = frozenset({
    "e.g.", "i.e.", "al.", "fig.", "figs.", "dr.", "mr.", "mrs.", "ms.", "prof.", "vs.", "cf.",
    "approx.", "ca.", "vol.", "eq.", "eqs.", "ref.", "refs.", "sr.", "jr.", "st.", "inc.", "ltd.",
    "co.", "corp.", "dept.", "univ.", "resp.", "incl.", "viz.", "pp.", "tab.", "sect.", "ch.",
    "u.s.", "u.k.", "spp.", "sp.", "subsp.", "var.", "ed.", "eds.", "no.", "nos.",
})
_NEEDS_DIGIT = frozenset({"no.", "nos.", "pp.", "vol."})


@dataclass(frozen=True)
class ChunkerConfig:
    max_tokens: int = 256
    overlap_tokens: int = 32
    strategy: str = "sentence"

    def __post_init__(self) -> None:
        for name in ("max_tokens", "overlap_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"chunker {name} must be an integer, got {value!r}")
        if self.max_tokens < 16:
            raise InputError(f"chunker max_tokens must be >= 16, got {self.max_tokens}")
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise InputError(f"chunker overlap_tokens must be in [0, max_tokens="
                             f"{self.max_tokens}), got {self.overlap_tokens}")
        if self.strategy not in STRATEGIES:
            raise InputError(f"unknown chunker strategy {self.strategy!r}, not in {STRATEGIES}")

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "overlap_tokens": self.overlap_tokens,
                "strategy": self.strategy, "version": CHUNKER_VERSION}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChunkerConfig:
        return cls(max_tokens=int(data.get("max_tokens", 256)),
                   overlap_tokens=int(data.get("overlap_tokens", 32)),
                   strategy=str(data.get("strategy", "sentence")))


class _Unit(NamedTuple):
    start: int
    end: int
    tokens: int
    para: int
    whole: bool  # a whole sentence (False: a fragment of an over-long sentence)


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def split_paragraphs(text: str) -> list[tuple[int, int]]:
    """Character spans of the paragraphs (separated by blank lines), whitespace-stripped."""
    cuts = [0, *(x for m in _PARAGRAPH_RE.finditer(text) for x in m.span()), len(text)]
    spans = (_strip(text, cuts[i], cuts[i + 1]) for i in range(0, len(cuts), 2))
    return [(s, e) for s, e in spans if s < e]


def split_sentences(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Character spans of the sentences of ``text[start:end]``, whitespace-stripped."""
    end = len(text) if end is None else end
    out, pos = [], start
    for m in _CANDIDATE_RE.finditer(text, start, end):
        if m.group("n"):
            cut = m.start()
        else:
            nxt = m.end()
            if nxt >= end or not _is_boundary(text, m.start(), m.group("p"), m.group("w"), nxt):
                continue
            cut = m.start() + len(m.group("p"))
        s, e = _strip(text, pos, cut)
        if s < e:
            out.append((s, e))
        pos = m.end()
    s, e = _strip(text, pos, end)
    if s < e:
        out.append((s, e))
    return out


def _is_boundary(text: str, punct_at: int, punct: str, space: str, nxt: int) -> bool:
    if "\n" in space:
        return True
    c = text[nxt]
    if not (c.isupper() or c.isdigit() or c in _OPENERS):
        return False
    if punct != ".":
        return True
    i = punct_at
    while i > 0 and not text[i - 1].isspace():
        i -= 1
    word = text[i:punct_at + 1].lstrip(_OPENERS).lower()
    if word in _NEEDS_DIGIT:
        return not c.isdigit()
    return word not in _ABBREVIATIONS


def _choose_cut(text: str, spans: list[tuple[int, int]], lo: int, hi: int) -> int:
    """Index k in (lo, hi] of the first token after a cut; prefers whitespace, then punctuation."""
    def valid(k: int) -> bool:
        return spans[k][0] >= spans[k - 1][1]

    floor = lo + max(1, (hi - lo) // 2)
    for k in range(hi, floor - 1, -1):
        if valid(k) and any(ch.isspace() for ch in text[spans[k - 1][1]:spans[k][0]]):
            return k
    for k in range(hi, floor - 1, -1):
        if valid(k) and not (text[spans[k][0]].isalnum() and text[spans[k - 1][1] - 1].isalnum()):
            return k
    return next((k for k in range(hi, lo, -1) if valid(k)), hi)


def _fragments(text: str, spans: list[tuple[int, int]], starts: list[int], s: int, e: int,
               para: int, budget: int, fits: Callable[[int, int], bool]) -> list[_Unit]:
    """Split the sentence text[s:e] at token boundaries into pieces that fit the budget."""
    i, stop = bisect_left(starts, s), bisect_left(starts, e)
    out: list[_Unit] = []
    while True:
        if stop - i <= 1 or (stop - i <= budget and fits(s, e)):
            out.append(_Unit(s, e, stop - i, para, False))
            return out
        k = _choose_cut(text, spans, i, min(i + budget, stop - 1))
        while k > i + 1 and not fits(s, _strip(text, s, spans[k][0])[1]):
            k -= 1
        piece_end = _strip(text, s, spans[k][0])[1]
        out.append(_Unit(s, piece_end, k - i, para, False))
        s, i = spans[k][0], k


def _pack(items: list[list[_Unit]], budget: int, overlap: int,
          carry_across_paragraphs: bool) -> list[list[_Unit]]:
    chunks: list[list[_Unit]] = []
    cur: list[_Unit] = []
    total = 0
    for item in items:
        groups = [[u] for u in item] if sum(u.tokens for u in item) > budget else [item]
        for group in groups:
            size = sum(u.tokens for u in group)
            if cur and total + size <= budget:
                cur, total = cur + group, total + size
                continue
            carry: list[_Unit] = []
            if cur:
                chunks.append(cur)
                if carry_across_paragraphs or cur[-1].para == group[0].para:
                    carry = _carry(cur, overlap)
            while carry and sum(u.tokens for u in carry) + size > budget:
                carry = carry[1:]
            cur = carry + group
            total = sum(u.tokens for u in cur)
    if cur:
        chunks.append(cur)
    return chunks


def _carry(cur: list[_Unit], overlap: int) -> list[_Unit]:
    """Trailing whole sentences (a strict suffix) totalling at most ``overlap`` tokens."""
    k, total = len(cur), 0
    while k > 1 and cur[k - 1].whole and total + cur[k - 1].tokens <= overlap:
        k, total = k - 1, total + cur[k - 1].tokens
    return cur[k:]


def _truncate(text: str, tokenizer: Tokenizer, limit: int, suffix: str = "") -> str:
    """Longest prefix of ``text`` cut at a token boundary whose count (with suffix) <= limit."""
    if tokenizer.count_tokens(text + suffix) <= limit:
        return text
    spans = tokenizer.token_spans(text)
    if len(spans) < 2:
        return text
    k = _choose_cut(text, spans, 0, min(max(limit, 1), len(spans) - 1))
    while k > 1 and tokenizer.count_tokens(text[:spans[k][0]].rstrip() + suffix) > limit:
        k -= 1
    return text[:spans[k][0]].rstrip()


def chunk_document(doc: Document, tokenizer: Tokenizer, config: ChunkerConfig) -> list[Chunk]:
    """Split ``doc`` into chunks whose ``embed_text`` fits ``config.max_tokens`` with specials.

    A title over half the budget is cut at a token boundary. A document with only a title gives
    one chunk whose text is the title (start = end = 0, chunk title "" so it is embedded once).
    Span counts are trusted at whitespace cuts, which holds for WordPiece/BERT tokenizers."""
    limit = config.max_tokens - SPECIAL_TOKENS
    text = doc.text
    title = doc.title.strip()
    s0, e0 = _strip(text, 0, len(text))
    if s0 == e0:
        if not title:
            raise InputError(f"document {doc.id!r} has no text and no title")
        only = _truncate(title, tokenizer, limit)
        return [Chunk(id=_chunk_id(doc.id, only, {}), doc_id=doc.id, ordinal=0, text=only,
                      start=0, end=0, title="")]
    prefix = f"{title}\n" if title else ""
    off = len(prefix)
    raw = tokenizer.token_spans(prefix + text)  # the one tokenizer call for most documents
    first = bisect_left(raw, (off, -1))
    starts = [s - off for s, _ in raw[first:]]
    if first > limit // 2:
        title = _truncate(title, tokenizer, limit // 2, "\n")
        prefix = f"{title}\n"
        first = tokenizer.count_tokens(prefix)
    budget = max(1, limit - first)
    spans: list[tuple[int, int]] = []  # text token spans, built only if a fragment is needed

    def fits(s: int, e: int) -> bool:
        return tokenizer.count_tokens(prefix + text[s:e]) <= limit

    def fragments(s: int, e: int, para: int) -> list[_Unit]:
        if not spans:
            spans.extend((a - off, b - off) for a, b in raw[len(raw) - len(starts):])
        return _fragments(text, spans, starts, s, e, para, budget, fits)

    if bisect_left(starts, e0) - bisect_left(starts, s0) <= budget:
        ranges = [(s0, e0)]
    else:
        paragraphs: list[list[_Unit]] = []
        for p, (ps, pe) in enumerate(split_paragraphs(text)):
            units: list[_Unit] = []
            for s, e in split_sentences(text, ps, pe):
                n = bisect_left(starts, e) - bisect_left(starts, s)
                units += [_Unit(s, e, n, p, True)] if n <= budget else fragments(s, e, p)
            paragraphs.append(units)
        items = paragraphs if config.strategy == "paragraph" else [
            [u] for units in paragraphs for u in units]
        packed = _pack(items, budget, config.overlap_tokens, config.strategy == "window")
        ranges = [r for units in packed for r in _verified(units, fits, fragments)]
    seen: dict[str, int] = {}
    return [Chunk(id=_chunk_id(doc.id, text[s:e], seen), doc_id=doc.id, ordinal=i,
                  text=text[s:e], start=s, end=e, title=title)
            for i, (s, e) in enumerate(ranges)]


def _verified(units: list[_Unit], fits: Callable[[int, int], bool],
              fragments: Callable[[int, int, int], list[_Unit]]) -> list[tuple[int, int]]:
    """Character ranges for a packed chunk. Whole sentences are cut at whitespace, where span
    counts are exact; chunks holding a mid-sentence fragment are re-counted and re-split."""
    if all(u.whole for u in units) or fits(units[0].start, units[-1].end):
        return [(units[0].start, units[-1].end)]
    if len(units) > 1:
        mid = len(units) // 2
        return _verified(units[:mid], fits, fragments) + _verified(units[mid:], fits, fragments)
    return [(f.start, f.end) for f in fragments(units[0].start, units[0].end, units[0].para)]


def _chunk_id(doc_id: str, text: str, seen: dict[str, int]) -> str:
    base = f"{doc_id}#{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"
    seen[base] = seen.get(base, 0) + 1
    return base if seen[base] == 1 else f"{base}-{seen[base]}"

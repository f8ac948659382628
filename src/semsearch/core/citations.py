"""Checking what an LLM wrote before anyone reads it, as it streams.

``AnswerGuard`` is fed the model's text in pieces and returns what is safe to show:

* citation markers (``[2]``, ``[1, 3]``, ``[source 2]``) are parsed; numbers that name a
  source are kept (written ``[1][3]``), any other is removed and counted, so no citation in
  an answer points at nothing;
* a run of eight or more words of the system prompt is cut out and counted: a model talked
  into reciting its instructions by a retrieved document does not leak them.

To decide, it holds back only the unfinished tail: an open ``[`` and the last few words,
which may yet become a marker or a recited run. The same guard serves a streamed answer
and a whole one (fed once, then finished), so both get the same text."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

LEAK_WORDS = 8  # a run this long copied from the system prompt counts as reciting it
LEAK_NOTE = "[instructions withheld]"
_MARKER = re.compile(
    r"\[\s*(?:(?:sources?|src|ref)\s*)?(\d{1,6}(?:\s*(?:,|;|and|&)\s*(?:(?:sources?|src|ref)"
    r"\s*)?\d{1,6})*)\s*\]", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")
_WORD = re.compile(r"\w+")
_GONE = "\x00"  # where a marker with no valid number was
_GAP = re.compile("[ \t]*\x00")
_MAX_OPEN_MARKER = 40  # an unclosed '[' further back than this is text, not a marker


@dataclass
class AnswerGuard:
    sources: frozenset[int]
    system_prompt: str
    cited: list[int] = field(default_factory=list)  # valid numbers, by first citation
    invalid: list[int] = field(default_factory=list)  # numbers removed
    leaks: int = 0  # runs of the system prompt cut out
    _pending: str = ""
    _shingles: frozenset[tuple[str, ...]] = frozenset()

    def __post_init__(self) -> None:
        words = _WORD.findall(self.system_prompt.lower())
        self._shingles = frozenset(tuple(words[i:i + LEAK_WORDS])
                                   for i in range(len(words) - LEAK_WORDS + 1))

    def feed(self, delta: str) -> str:
        self._pending += delta
        return self._drain(final=False)

    def finish(self) -> str:
        return self._drain(final=True)

    def check(self, text: str) -> str:
        """A whole answer at once."""
        return self.feed(text) + self.finish()

    # -- internals ---------------------------------------------------------------------

    def _drain(self, final: bool) -> str:
        text = self._pending
        words = [(m.start(), m.end(), m.group(0).lower()) for m in _WORD.finditer(text)]
        runs = self._leak_runs(words)
        cut = len(text)
        if not final:
            # a recited run could still start among the last words (the last may be cut)
            if len(words) >= LEAK_WORDS:
                cut = min(cut, words[-LEAK_WORDS][0])
            elif words:
                cut = min(cut, words[0][0])
            open_at = text.rfind("[")
            if open_at >= 0 and "]" not in text[open_at:] and \
                    len(text) - open_at <= _MAX_OPEN_MARKER:
                cut = min(cut, open_at)
            for start, end in runs:  # a run reaching the tail may go on
                if end >= cut:
                    cut = min(cut, start)
            cut = self._outside_marker(text, cut)
            cut = len(text[:cut].rstrip(" \t"))  # spaces wait: a removed marker may follow
        out: list[str] = []
        pos = 0
        for start, end in runs:
            if end > cut:
                break
            out.append(self._citations(text[pos:start]))
            out.append(LEAK_NOTE)
            self.leaks += 1
            pos = end
        out.append(self._citations(text[pos:cut]))
        self._pending = text[cut:]
        return "".join(out)

    @staticmethod
    def _outside_marker(text: str, cut: int) -> int:
        """Move a cut that would split a complete marker to the marker's start."""
        for m in _MARKER.finditer(text):
            if m.start() < cut < m.end():
                return m.start()
        return cut

    def _leak_runs(self, words: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
        """Character ranges covered by system-prompt shingles, merged."""
        runs: list[list[int]] = []
        for i in range(len(words) - LEAK_WORDS + 1):
            if tuple(w for _, _, w in words[i:i + LEAK_WORDS]) in self._shingles:
                start, end = words[i][0], words[i + LEAK_WORDS - 1][1]
                if runs and start <= runs[-1][1]:
                    runs[-1][1] = max(runs[-1][1], end)
                else:
                    runs.append([start, end])
        return [(s, e) for s, e in runs]

    def _citations(self, text: str) -> str:
        def repl(m: re.Match[str]) -> str:
            kept: list[int] = []
            for raw in _NUMBER.findall(m.group(1)):
                n = int(raw)
                if n in self.sources:
                    if n not in kept:
                        kept.append(n)
                    if n not in self.cited:
                        self.cited.append(n)
                else:
                    self.invalid.append(n)
            return "".join(f"[{n}]" for n in kept) or _GONE

        # a removed marker takes the spaces before it along: "claim [9]." -> "claim."
        return _GAP.sub("", _MARKER.sub(repl, text))

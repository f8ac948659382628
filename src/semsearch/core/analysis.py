"""English text analysis for keyword search: lowercase, unicode word tokens (runs of letters
and digits), stop-word removal, Snowball English stemming (PyStemmer).

The same analyzer must be used to index and to query; its output feeds any BM25 backend."""

from __future__ import annotations

import re
import threading
from typing import Any

# The NLTK English list (itself close to the classic SMART/Lucene-contrib sets), reduced to
# the forms our tokenizer can produce: "don't" tokenizes to "don" + "t", both listed.
_ENGLISH = """
a about above after again against ain all am an and any are aren as at be because been before
being below between both but by can couldn d did didn do does doesn doing don down during each
few for from further had hadn has hasn have haven having he her here hers herself him himself
his how i if in into is isn it its itself just ll m ma me mightn more most mustn my myself
needn no nor not now o of off on once only or other our ours ourselves out over own re s same
shan she should shouldn so some such t than that the their theirs them themselves then there
these they this those through to too under until up ve very was wasn we were weren what when
where which while who whom why will with won wouldn y you your yours yourself yourselves
"""

# Lucene's EnglishAnalyzer default (33 words): a lighter alternative for callers who want it.
_LUCENE = """
a an and are as at be but by for if in into is it no not of on or such that the their then
there these they this to was will with
"""

ENGLISH_STOP_WORDS: frozenset[str] = frozenset(_ENGLISH.split())
LUCENE_STOP_WORDS: frozenset[str] = frozenset(_LUCENE.split())

_WORD = re.compile(r"[^\W_]+")


class Analyzer:
    """``terms(text)`` -> stemmed, stop-word-free lowercase terms in text order.

    The stemmer is created on first use (not at import) and shared by the instance; PyStemmer
    objects are not thread-safe, so calls into it are serialized."""

    def __init__(self, stop_words: frozenset[str] = ENGLISH_STOP_WORDS, *,
                 stem: bool = True) -> None:
        self._stop_words = stop_words
        self._stem = stem
        self._stemmer: Any = None
        self._lock = threading.Lock()

    def tokens(self, text: str) -> list[str]:
        """Lowercased word tokens without stop words, before stemming."""
        stop = self._stop_words
        return [t for t in _WORD.findall(text.lower()) if t not in stop]

    def terms(self, text: str) -> list[str]:
        tokens = self.tokens(text)
        if not self._stem or not tokens:
            return tokens
        with self._lock:
            if self._stemmer is None:
                import Stemmer

                self._stemmer = Stemmer.Stemmer("english")
            stemmed: list[str] = self._stemmer.stemWords(tokens)
        return stemmed

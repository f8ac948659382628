"""A deterministic embedder for tests and demos: ``SEMSEARCH_EMBEDDER=fake``.

Hashed bag of words: every lower-cased word adds +-1 to one of ``dimension`` coordinates
chosen by its SHA-256, and the sum is L2-normalized. Texts that share words are close, so
search behaves sensibly, and the vectors are the same on every machine (integer sums, one
division), so tests built on it hold on any CPU. It loads nothing: no model to build, no
network. It registers through the same table as the real embedders (``wiring.EMBEDDERS``),
the way simonw/llm's test model does."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import InputError
from semsearch.ports import Tokenizer, Vectors

_WORD = re.compile(r"\w+", re.UNICODE)


def _slot(word: str, dimension: int) -> tuple[int, float]:
    digest = hashlib.sha256(word.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") % dimension, 1.0 if digest[4] & 1 else -1.0


class FakeEmbedder:
    """``max_tokens`` bounds the chunks made for it, as a real model's window does."""

    def __init__(self, dimension: int = 384, max_tokens: int = 256,
                 tokenizer: Tokenizer | None = None) -> None:
        if dimension < 2:
            raise InputError(f"the fake embedder needs at least 2 dimensions, got {dimension}")
        self.meter = ProviderMeter()
        self._identity = EmbedderIdentity(provider="fake", model="hashed-bag-of-words",
                                          revision="1", dimension=dimension,
                                          max_tokens=max_tokens)
        self._tokenizer = tokenizer

    @property
    def identity(self) -> EmbedderIdentity:
        return self._identity

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            # The local model's WordPiece tokenizer (a JSON file; no model is loaded), so
            # chunks are cut exactly as they are for the default model.
            from semsearch.adapters.embedders.onnx_local import HfTokenizer

            path = Path(str(resources.files("semsearch") / "data" / "minilm" / "tokenizer.json"))
            self._tokenizer = HfTokenizer(path, self._identity.max_tokens)
        return self._tokenizer

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        dim = self._identity.dimension
        out = np.zeros((len(texts), dim), dtype=np.float32)
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InputError(f"text #{i} is empty; nothing to embed")
            acc = np.zeros(dim, dtype=np.float64)
            for word in _WORD.findall(text.lower()):
                slot, sign = _slot(word, dim)
                acc[slot] += sign
            norm = float(np.linalg.norm(acc))
            if norm == 0.0:  # no word characters at all: a fixed unit vector
                acc[0], norm = 1.0, 1.0
            out[i] = acc / norm
        if texts:
            self.meter.record_call(len(texts), sum(len(_WORD.findall(t)) for t in texts), 0.0)
        return out

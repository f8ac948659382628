"""Embedders for tests that must not depend on a model's numerics.

``NoiseEmbedder`` knows nothing about meaning: each text's vector is a unit vector drawn from
a generator seeded by the text's SHA-256, so it is the same on every machine and CPU (numpy's
PCG64 stream and float64 arithmetic do not vary with SIMD). A collection re-indexed with it
ranks by chance, which is what a gate must catch, whatever CPU the test runs on."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.ports import Tokenizer, Vectors


class NoiseEmbedder:
    def __init__(self, tokenizer: Tokenizer, dimension: int = 384) -> None:
        self._tokenizer = tokenizer
        self.meter = ProviderMeter()
        self._identity = EmbedderIdentity(provider="fake", model="noise", revision="1",
                                          dimension=dimension)

    @property
    def identity(self) -> EmbedderIdentity:
        return self._identity

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        out = np.empty((len(texts), self._identity.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self._identity.dimension)
            out[i] = v / np.linalg.norm(v)
        self.meter.record_call(len(texts), sum(len(t.split()) for t in texts), 0.0)
        return out

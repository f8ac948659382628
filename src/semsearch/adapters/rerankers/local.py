"""A local re-scorer: a stronger bi-encoder than the index's model scores each candidate by
the cosine of its vector and the query's.

No package here ships a cross-encoder's weights, so re-ranking offline means re-scoring the
fused candidates with a bigger embedding model (all-mpnet-base-v2, 768-d, 110M parameters,
against the default MiniLM's 22M). Scoring goes through any ``Embedder``; wiring hands in
the model behind the engine's embedding cache, so a passage seen by an earlier query is
never embedded again (its vector is keyed by the model's identity and the text's hash)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from semsearch.core.types import InputType
from semsearch.errors import InputError


class BiEncoderReranker:
    """``Reranker`` by cosine: scores in [-1, 1], one per text, higher is more relevant.

    ``embedder`` is anything with ``identity`` and ``embed(texts, input_type)`` (an
    ``Embedder``, or the runtime's cached one); ``on_close`` releases what it holds."""

    def __init__(self, embedder: Any, on_close: Callable[[], None] | None = None) -> None:
        self.embedder = embedder
        self._on_close = on_close

    @property
    def identity(self) -> Mapping[str, str]:
        ident = self.embedder.identity
        return {"provider": "local", "kind": "bi-encoder", "model": ident.model,
                "revision": ident.revision}

    def rerank(self, query: str, texts: Sequence[str]) -> list[float]:
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query to re-rank by is empty")
        if not texts:
            return []
        # Empty candidates cannot be embedded; they score lowest instead of failing the call.
        keep = [i for i, t in enumerate(texts) if isinstance(t, str) and t.strip()]
        q = self.embedder.embed([query], InputType.QUERY)[0]
        scores = [-1.0] * len(texts)
        if keep:
            vecs = self.embedder.embed([texts[i] for i in keep], InputType.PASSAGE)
            sims = np.asarray(vecs, dtype=np.float32) @ np.asarray(q, dtype=np.float32)
            for i, s in zip(keep, sims.tolist(), strict=True):
                scores[i] = float(s)
        return scores

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()

"""``core.adapter``: the trainer recovers a known linear map, stops early on held-out
queries, and an adapter's bytes, fingerprint and stamped identity are stable."""

from __future__ import annotations

import numpy as np
import pytest

from semsearch.core.adapter import (
    AdapterConfig,
    LinearAdapter,
    adapted_identity,
    artifact_key,
    fingerprint,
    ndcg_at_10,
    split_adapted,
    train_linear_adapter,
)
from semsearch.core.types import EmbedderIdentity
from semsearch.errors import InputError

BASE = EmbedderIdentity("local", "sentence-transformers/all-MiniLM-L6-v2", "pkg-1/int8", 384)


def _unit(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def _planted(seed: int = 1, d: int = 16, m: int = 200, n: int = 300,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[list[int]]]:
    """Queries that are their relevant document seen through the inverse of a known map A:
    ``normalize(A q)`` is (nearly) the document, ``q`` itself is far from it."""
    rng = np.random.default_rng(seed)
    docs = _unit(rng.normal(size=(m, d)))
    a = np.eye(d) + 1.5 * rng.normal(size=(d, d)) / np.sqrt(d)
    pos = rng.integers(0, m, size=n)
    queries = _unit(docs[pos] @ np.linalg.inv(a).T + 0.02 * rng.normal(size=(n, d)))
    return a, queries.astype(np.float32), docs.astype(np.float32), [[int(p)] for p in pos]


def test_a_planted_linear_map_is_recovered() -> None:
    a, queries, docs, positives = _planted()
    w, report = train_linear_adapter(queries, positives, docs, AdapterConfig(
        learning_rate=0.01, l2=0.0, max_steps=600, eval_every=10))
    assert report.holdout_ndcg_before < 0.3 and report.holdout_ndcg_after > 0.95
    assert report.holdout_queries == 60 and report.train_queries == 240
    assert 0 < report.best_step <= report.steps

    def cos(x: np.ndarray, y: np.ndarray) -> float:
        return float((x * y).sum() / np.linalg.norm(x) / np.linalg.norm(y))

    assert cos(w, a) > cos(np.eye(16), a) + 0.2  # W moved toward A (up to scale)
    adapted = LinearAdapter(w, base=BASE.key()).apply(queries)
    assert np.allclose(np.linalg.norm(adapted, axis=1), 1.0, atol=1e-5)
    assert ndcg_at_10(adapted.astype(np.float64), positives, docs.astype(np.float64)) > 0.9


def test_nothing_to_learn_keeps_the_identity() -> None:
    """Queries already equal to their documents: no step beats W = I on held-out queries,
    so the identity comes back (early stopping, not drift)."""
    rng = np.random.default_rng(3)
    docs = _unit(rng.normal(size=(100, 8))).astype(np.float32)
    w, report = train_linear_adapter(docs, [[i] for i in range(100)], docs,
                                     AdapterConfig(max_steps=100, eval_every=5, patience=3))
    assert report.holdout_ndcg_before == 1.0 and report.best_step == 0
    assert np.array_equal(w, np.eye(8, dtype=np.float32))
    assert report.stopped.startswith("no better held-out")


def test_bad_training_input_is_refused() -> None:
    docs = np.eye(4, dtype=np.float32)
    with pytest.raises(InputError, match="no labelled pairs"):
        train_linear_adapter(np.zeros((0, 4), np.float32), [], docs)
    with pytest.raises(InputError, match="at least one relevant"):
        train_linear_adapter(docs[:2], [[0], []], docs)
    with pytest.raises(InputError, match="dimension"):
        train_linear_adapter(np.ones((1, 3), np.float32), [[0]], docs)
    with pytest.raises(InputError, match="temperature"):
        AdapterConfig(temperature=0)


def test_bytes_fingerprint_and_identity_round_trip() -> None:
    w = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    adapter = LinearAdapter(w, base=BASE.key(), meta={"collection": "c", "pairs": 3})
    blob = adapter.to_bytes()
    assert blob == LinearAdapter(w.copy(), BASE.key(), {"pairs": 3, "collection": "c"}
                                 ).to_bytes()  # deterministic
    back = LinearAdapter.from_bytes(blob)
    assert np.array_equal(back.weight, w) and back.base == BASE.key()
    assert dict(back.meta) == {"collection": "c", "pairs": 3}
    fp = adapter.fingerprint()
    assert fp == fingerprint(blob) and len(fp) == 16
    assert artifact_key(fp) == f"linear-adapter/{fp}"
    with pytest.raises(InputError, match="bad header"):
        LinearAdapter.from_bytes(b"junk")
    with pytest.raises(InputError, match="weight bytes"):
        LinearAdapter.from_bytes(blob[:-4])

    ident = adapted_identity(BASE, fp)
    assert ident != BASE and ident.key() != BASE.key()
    assert ident.dimension == BASE.dimension and ident.model == BASE.model
    assert split_adapted(ident) == (BASE, fp) and split_adapted(BASE) is None
    with pytest.raises(InputError, match="adapted already"):
        adapted_identity(ident, fp)

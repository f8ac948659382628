"""A many-batch call spread over two single-thread sessions gives the very vectors of one
session (each batch holds the same texts either way), and a query never builds the pool."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder, _spread
from semsearch.core.types import InputType
from tests.conftest import DATA


def _abstracts(n: int) -> list[str]:
    with (DATA / "scifact" / "corpus.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line)["text"][:200 + 11 * i] for i, line in
                zip(range(n), fh, strict=False)]


def test_two_workers_give_the_same_vectors(models_dir: Path,
                                           embedder: LocalOnnxEmbedder) -> None:
    texts = _abstracts(40)
    spread = LocalOnnxEmbedder(models_dir, threads=2, workers=2)
    spread.embed(["one query"], InputType.QUERY)
    assert spread._pool == []  # one batch: the query session alone
    got = spread.embed(texts)
    assert len(spread._pool) == 2
    np.testing.assert_allclose(got, embedder.embed(texts), atol=1e-6)
    assert spread.meter.snapshot().items == len(texts) + 1


def test_a_failing_batch_raises_in_the_caller() -> None:
    done: list[int] = []

    def ok(idx: list[int]) -> None:
        done.extend(idx)

    def bad(idx: list[int]) -> None:
        raise RuntimeError(f"batch {idx} failed")

    with pytest.raises(RuntimeError, match="failed"):
        _spread([[i] for i in range(20)], [bad, bad])
    done.clear()
    _spread([[i] for i in range(20)], [ok, ok])
    assert sorted(done) == list(range(20))  # every batch once


def test_the_workers_setting_reaches_the_local_embedder(tmp_path: Path) -> None:
    from semsearch.config import Settings
    from semsearch.wiring import make_embedder

    embedder = make_embedder(Settings(home=tmp_path, embedder_workers=2))
    assert isinstance(embedder, LocalOnnxEmbedder) and embedder._workers == 2

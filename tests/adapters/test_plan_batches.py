"""Length-aware batching: texts sorted by token count are cut where padding would cost
more than another call, so a call's mixed lengths are not all padded to the longest, while
a long sorted run (an ingest) still gets full batches."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import (
    CALL_TOKENS,
    mean_pooled,
    plan_batches,
)
from semsearch.core.metering import ProviderMeter


def cost(lengths: Sequence[int], ends: Sequence[int], call: int = CALL_TOKENS) -> int:
    return sum(call + (b - a) * lengths[b - 1] for a, b in itertools.pairwise([0, *ends]))


def brute_force(lengths: Sequence[int], batch_size: int) -> int:
    n = len(lengths)
    best = math.inf
    for mask in range(1 << max(n - 1, 0)):
        ends = [i + 1 for i in range(n - 1) if mask >> i & 1] + [n]
        sizes = [b - a for a, b in itertools.pairwise([0, *ends])]
        if max(sizes) <= batch_size:
            best = min(best, cost(lengths, ends))
    return int(best)


@pytest.mark.parametrize("seed", range(40))
def test_the_plan_is_never_dearer_than_fixed_runs(seed: int) -> None:
    rng = random.Random(seed)
    lengths = sorted(rng.randint(3, 60) for _ in range(rng.randint(1, 9)))
    batch_size = rng.randint(1, 5)
    ends = plan_batches(lengths, batch_size)
    assert ends[-1] == len(lengths) and ends == sorted(set(ends))
    assert all(b - a <= batch_size for a, b in itertools.pairwise([0, *ends]))
    fixed = [*range(batch_size, len(lengths), batch_size), len(lengths)]
    assert cost(lengths, ends) <= cost(lengths, fixed)
    assert cost(lengths, ends) <= 1.25 * brute_force(lengths, batch_size)


@pytest.mark.parametrize("seed", range(20))
def test_a_run_starting_at_a_cut_is_cut_the_same_way_alone(seed: int) -> None:
    """What lets the Ray executor send runs of texts to its actors and get the batches
    (and so the int8 vectors) of an in-process call."""
    rng = random.Random(seed)
    lengths = sorted(rng.randint(3, 80) for _ in range(rng.randint(2, 60)))
    ends = plan_batches(lengths, 8)
    for start in [0, *ends[:-1]]:
        alone = plan_batches(lengths[start:], 8)
        assert [start + e for e in alone] == [e for e in ends if e > start]


def test_mixed_lengths_are_not_padded_to_the_longest() -> None:
    assert plan_batches([10, 40], 8) == [1, 2]  # 2 calls of 10 and 40, not 80 tokens
    assert plan_batches([9, 10, 10, 38, 40], 8) == [3, 5]


def test_a_long_sorted_run_gets_full_batches() -> None:
    rng = random.Random(0)
    lengths = sorted(rng.randint(60, 256) for _ in range(4000))
    ends = plan_batches(lengths, 8)
    assert len(ends) <= math.ceil(4000 / 8) * 1.15  # cut only where a length jumps
    padded = cost(lengths, ends) - CALL_TOKENS * len(ends)
    assert padded < 1.01 * sum(lengths)
    assert plan_batches([], 8) == []


class _Session:
    """Records the padded shape of every call; returns a hidden state of ones."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def run(self, outputs: Any, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        n, width = feed["input_ids"].shape
        self.shapes.append((n, width))
        return [np.ones((n, width, 4), np.float32)]


class _Tokenizer:
    def encode_for_model(self, texts: Sequence[str]) -> list[list[int]]:
        return [[1] * len(t.split()) for t in texts]


def test_the_embedder_runs_the_plan() -> None:
    session = _Session()
    texts = ["a " * 40, "b " * 3, "c " * 4, "d " * 41, "e " * 3]
    out = mean_pooled(lambda: session, _Tokenizer(), ProviderMeter(), texts,  # type: ignore[arg-type]
                      dimension=4, batch_size=8, output="x")
    assert out.shape == (5, 4)
    assert sorted(session.shapes) == [(2, 41), (3, 4)]  # not one call of 5 x 41

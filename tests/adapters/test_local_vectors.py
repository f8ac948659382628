"""LocalVectorIndex: exact and ANN paths agree with brute force, filters never come back short,
and the on-disk state is either loaded whole or ignored (generation -1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.vectors.local import LocalVectorIndex

DIM = 32
EXACT = {"ann_threshold": 10**9}
ANN = {"ann_threshold": 0}
PATHS = pytest.mark.parametrize("mode", [EXACT, ANN], ids=["exact", "ann"])


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def brute(vecs: dict[int, np.ndarray], q: np.ndarray, k: int,
          allowed: set[int] | None = None) -> list[int]:
    labels = [lab for lab in vecs if allowed is None or lab in allowed]
    scores = np.array([float(vecs[lab] @ q) for lab in labels])
    return [labels[i] for i in np.argsort(-scores, kind="stable")[:k]]


def filled(tmp_path: Path, n: int, mode: dict[str, int], **kw: Any) -> tuple[
        LocalVectorIndex, dict[int, np.ndarray]]:
    idx = LocalVectorIndex(tmp_path / "vec", DIM, **mode, **kw)
    v = unit(n)
    labels = list(range(1000, 1000 + n))
    idx.add(labels, v)
    return idx, dict(zip(labels, v, strict=True))


def test_ann_churn_never_duplicates_or_resurrects(tmp_path: Path) -> None:
    """New labels recycle tombstoned graph slots; revived labels must not live in two slots."""
    rng = np.random.default_rng(9)
    idx = LocalVectorIndex(tmp_path / "vec", DIM, **ANN)
    model: dict[int, np.ndarray] = {}
    for step in range(40):
        labels = [int(x) for x in rng.integers(0, 300, 25)]
        vecs = unit(25, seed=100 + step)
        idx.add(labels, vecs)
        model.update(zip(labels, vecs, strict=True))
        dropped = [int(x) for x in rng.integers(0, 300, 15)]
        idx.remove(dropped)
        for lab in dropped:
            model.pop(lab, None)
        q = unit(1, seed=500 + step)[0]
        hits = idx.search(q, len(model) + 5)
        assert len(hits) == len(idx) == len(model)
        assert len({lab for lab, _ in hits}) == len(hits)
        for lab, score in hits:
            assert score == pytest.approx(float(model[lab] @ q), abs=1e-4)


def test_ann_short_answer_falls_back_to_exact(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The graph may come back with fewer than k candidates (graph islands under a filter,
    tombstones): the index must then answer exactly rather than short."""
    idx, model = filled(tmp_path, 3000, ANN, filter_exact_below=0, filter_exact_fraction=0)
    q = unit(1, seed=12)[0]
    idx.search(q, 1)
    monkeypatch.setattr(LocalVectorIndex, "_candidates",
                        lambda *a, **kw: np.empty(0, np.int64))
    allowed = set(list(model)[::7])
    assert [lab for lab, _ in idx.search(q, 10, allowed)] == brute(model, q, 10, allowed)
    assert [lab for lab, _ in idx.search(q, 10)] == brute(model, q, 10)

def test_save_of_small_index_drops_stale_graph(tmp_path: Path) -> None:
    idx, _ = filled(tmp_path, 50, ANN)
    idx.save(1)
    idx.clear()
    assert len(idx) == 0 and idx.generation == -1 and idx.search(unit(1)[0], 3) == []
    idx.ann_threshold = 100
    idx.add([1], unit(1))
    idx.save(2)
    assert not list((tmp_path / "vec").glob("graph-*"))
    assert len(LocalVectorIndex(tmp_path / "vec", DIM)) == 1


@pytest.mark.parametrize("damage", ["garbage", "no-key", "dimension", "count", "no-vectors",
                                    "bad-vectors"])
def test_damaged_state_loads_empty_at_minus_one(tmp_path: Path, damage: str) -> None:
    idx, _ = filled(tmp_path, 30, EXACT)
    idx.save(4)
    d = tmp_path / "vec"
    manifest = json.loads((d / "manifest.json").read_text())
    if damage == "garbage":
        (d / "manifest.json").write_text("{not json")
    elif damage == "no-key":
        del manifest["count"]
    elif damage in ("dimension", "count"):
        manifest[damage] += 1
    elif damage == "no-vectors":
        (d / manifest["files"]["vectors"]).unlink()
    else:
        (d / manifest["files"]["labels"]).write_bytes(b"\x93NUMPY garbage")
    if damage in ("no-key", "dimension", "count"):
        (d / "manifest.json").write_text(json.dumps(manifest))
    fresh = LocalVectorIndex(d, DIM)
    assert fresh.generation == -1 and len(fresh) == 0 and fresh.search(unit(1)[0], 3) == []


def test_corrupt_graph_keeps_vectors_and_rebuilds(tmp_path: Path) -> None:
    idx, _ = filled(tmp_path, 200, ANN)
    idx.save(5)
    (next((tmp_path / "vec").glob("graph-*.usearch"))).write_bytes(b"\0" * 64)
    again = LocalVectorIndex(tmp_path / "vec", DIM, **ANN)
    assert again.generation == 5 and len(again) == 200 and not again.ann_built
    q = unit(1, seed=3)[0]
    assert again.search(q, 5) == idx.search(q, 5)



"""LocalVectorIndex: exact and ANN paths agree with brute force, filters never come back short,
and the on-disk state is either loaded whole or ignored (generation -1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.vectors.local import LocalVectorIndex
from semsearch.errors import InputError

DIM = 32
EXACT = {"ann_threshold": 10**9}
ANN = {"ann_threshold": 0}
PATHS = pytest.mark.parametrize("mode", [EXACT, ANN], ids=["exact", "ann"])


def unit(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def clustered(n: int, dim: int, centers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    v = c[rng.integers(0, centers, n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
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


def test_exact_matches_brute_force(tmp_path: Path) -> None:
    idx, model = filled(tmp_path, 800, EXACT)
    for q in unit(20, seed=1):
        hits = idx.search(q, 10)
        assert [lab for lab, _ in hits] == brute(model, q, 10)
        for lab, score in hits:
            assert score == pytest.approx(float(model[lab] @ q), abs=1e-5)
    assert not idx.ann_built
    assert len(idx.search(unit(1, seed=2)[0], 5000)) == 800


@PATHS
def test_upsert_replaces(tmp_path: Path, mode: dict[str, int]) -> None:
    idx, model = filled(tmp_path, 600, mode)
    q, old = unit(1, seed=5)[0], model[1005]
    idx.add([1005, 1006, 1006], np.stack([q, old, q]))  # duplicate in one batch: last wins
    assert len(idx) == 600
    top = idx.search(q, 2)
    assert {lab for lab, _ in top} == {1005, 1006}
    assert all(score == pytest.approx(1.0, abs=1e-5) for _, score in top)
    assert all(lab not in (1005, 1006) for lab, _ in idx.search(old, 3)[1:])
    assert idx.ann_built == (mode is ANN)


@PATHS
def test_remove_hides_immediately_and_readd_works(tmp_path: Path, mode: dict[str, int]) -> None:
    idx, model = filled(tmp_path, 600, mode)
    q = unit(1, seed=3)[0]
    idx.search(q, 1)  # builds the graph on the ANN path before the removals
    gone = {lab for lab, _ in idx.search(q, 20)}
    idx.remove([*gone, 999_999])  # unknown labels are ignored
    assert len(idx) == 580
    for lab in gone:
        del model[lab]
    hits = [lab for lab, _ in idx.search(q, 20)]
    assert not gone & set(hits)
    assert hits == brute(model, q, 20)
    back = sorted(gone)[0]
    idx.add([back], q[None, :])
    assert idx.search(q, 1)[0][0] == back
    assert len(idx) == 581


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


@pytest.mark.parametrize(("mode", "size", "kw"), [
    (EXACT, 40, {}),
    (ANN, 3000, {}),                                                # ANN + hnswlib filter
    (ANN, 400, {}),                                                 # small -> exact rows
    (ANN, 5, {"filter_exact_below": 0, "filter_exact_fraction": 0}),  # selective, forced ANN
    (ANN, 60, {"filter_exact_below": 0, "filter_exact_fraction": 0, "ef_search": 10}),
], ids=["exact", "ann-broad", "ann-small", "ann-selective", "ann-low-ef"])
def test_filter_returns_k_when_k_allowed_exist(tmp_path: Path, mode: dict[str, int], size: int,
                                               kw: dict[str, float]) -> None:
    idx, model = filled(tmp_path, 6000, mode, **kw)
    rng = np.random.default_rng(4)
    allowed = {int(x) for x in rng.choice(list(model), size, replace=False)} | {-5, 10**7}
    for q in unit(10, seed=6):
        k = 10
        hits = idx.search(q, k, allowed)
        assert len(hits) == min(k, size)
        assert {lab for lab, _ in hits} <= allowed
        if size <= 60:
            assert [lab for lab, _ in hits] == brute(model, q, k, allowed)
    assert idx.ann_built == ((mode is ANN and size == 3000) or "filter_exact_below" in kw)
    assert idx.search(unit(1)[0], 5, set()) == []
    assert idx.search(unit(1)[0], 5, {-1}) == []


def test_ann_short_answer_falls_back_to_exact(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """hnswlib raises when it finds fewer than k (graph islands under a filter, tombstones):
    the index must then answer exactly rather than short."""
    idx, model = filled(tmp_path, 3000, ANN, filter_exact_below=0, filter_exact_fraction=0)
    q = unit(1, seed=12)[0]
    idx.search(q, 1)
    monkeypatch.setattr(type(idx._hnsw), "query", lambda *a, **kw: None)
    allowed = set(list(model)[::7])
    assert [lab for lab, _ in idx.search(q, 10, allowed)] == brute(model, q, 10, allowed)
    assert [lab for lab, _ in idx.search(q, 10)] == brute(model, q, 10)

@PATHS
def test_persistence_round_trip(tmp_path: Path, mode: dict[str, int]) -> None:
    idx, _ = filled(tmp_path, 500, mode)
    idx.remove([1000, 1001])
    assert idx.generation == -1
    idx.save(7)
    assert idx.generation == 7
    assert (tmp_path / "vec" / "hnsw.bin").exists() == (mode is ANN)
    again = LocalVectorIndex(tmp_path / "vec", DIM, **mode)
    assert again.generation == 7 and len(again) == 498 and again.ann_built == (mode is ANN)
    for q in unit(5, seed=8):
        assert again.search(q, 10) == idx.search(q, 10)
    again.add([1000], unit(1, seed=8))  # revives a tombstone restored from the graph
    assert again.search(unit(1, seed=8)[0], 1)[0][0] == 1000
    again.save(8)
    assert LocalVectorIndex(tmp_path / "vec", DIM, **mode).generation == 8
    manifest = json.loads((tmp_path / "vec" / "manifest.json").read_text())
    assert manifest == {"generation": 8, "dimension": DIM, "count": 499, "ann": mode is ANN}


def test_save_of_small_index_drops_stale_graph(tmp_path: Path) -> None:
    idx, _ = filled(tmp_path, 50, ANN)
    idx.save(1)
    idx.clear()
    assert len(idx) == 0 and idx.generation == -1 and idx.search(unit(1)[0], 3) == []
    idx.ann_threshold = 100
    idx.add([1], unit(1))
    idx.save(2)
    assert not (tmp_path / "vec" / "hnsw.bin").exists()
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
        (d / "vectors.npy").unlink()
    else:
        (d / "vectors.npy").write_bytes(b"\x93NUMPY garbage")
    if damage in ("no-key", "dimension", "count"):
        (d / "manifest.json").write_text(json.dumps(manifest))
    fresh = LocalVectorIndex(d, DIM)
    assert fresh.generation == -1 and len(fresh) == 0 and fresh.search(unit(1)[0], 3) == []


def test_corrupt_graph_keeps_vectors_and_rebuilds(tmp_path: Path) -> None:
    idx, _ = filled(tmp_path, 200, ANN)
    idx.save(5)
    (tmp_path / "vec" / "hnsw.bin").write_bytes(b"\0" * 64)
    again = LocalVectorIndex(tmp_path / "vec", DIM, **ANN)
    assert again.generation == 5 and len(again) == 200 and not again.ann_built
    q = unit(1, seed=3)[0]
    assert again.search(q, 5) == idx.search(q, 5)


def test_input_errors(tmp_path: Path) -> None:
    idx = LocalVectorIndex(tmp_path / "vec", DIM)
    assert idx.search(unit(1)[0], 5) == []
    idx.add([], np.empty((0, DIM), dtype=np.float32))
    idx.add([], np.empty((0,), dtype=np.float32))
    assert len(idx) == 0
    with pytest.raises(InputError, match=rf"expected dimension {DIM}.*\(2, 16\)"):
        idx.add([1, 2], unit(2, dim=16))
    with pytest.raises(InputError, match=rf"expected dimension {DIM}.*\(1, 8\)"):
        idx.search(unit(1, dim=8)[0], 3)
    bad = unit(2)
    bad[1, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        idx.add([1, 2], bad)
    with pytest.raises(InputError, match="NaN"):
        idx.search(bad[1], 3)
    with pytest.raises(InputError, match="2 labels but 3 vectors"):
        idx.add([1, 2], unit(3))
    with pytest.raises(InputError, match="non-negative"):
        idx.add([-1], unit(1))
    assert len(idx) == 0
    idx.add([1], unit(1))
    assert idx.search(unit(1)[0], 0) == []


def test_ann_recall_at_defaults(tmp_path: Path) -> None:
    dim, n = 128, 4000
    data = clustered(n + 100, dim, centers=40, seed=11)
    base, queries = data[:n], data[n:]
    ann = LocalVectorIndex(tmp_path / "ann", dim, ann_threshold=0)
    exact = LocalVectorIndex(tmp_path / "exact", dim)
    ann.add(list(range(n)), base)
    exact.add(list(range(n)), base)
    found = 0
    for q in queries:
        truth = {lab for lab, _ in exact.search(q, 10)}
        found += len(truth & {lab for lab, _ in ann.search(q, 10)})
    assert ann.ann_built and not exact.ann_built
    assert found / (10 * len(queries)) >= 0.98

"""LocalVectorIndex on disk: a save appends what changed (rows + one committed log group),
a crash at any point reopens at the last complete commit or at -1 (rebuild), snapshots are
taken when the log or the dead rows grow, and two processes on one folder never mix."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from semsearch.adapters.vectors import local as local_module
from semsearch.adapters.vectors import vector_log
from semsearch.adapters.vectors.local import FORMAT, LocalVectorIndex

DIM = 16
ANN = {"ann_threshold": 0}


def unit(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    out: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return data


def file_of(folder: Path, key: str) -> Path:
    return folder / manifest(folder)["files"][key]


def exact(model: dict[int, np.ndarray], q: np.ndarray, k: int) -> list[int]:
    labels = sorted(model)
    scores = np.array([float(model[x] @ q) for x in labels])
    return [labels[i] for i in np.argsort(-scores, kind="stable")[:k]]


def top(index: LocalVectorIndex, q: np.ndarray, k: int = 10) -> list[int]:
    return [label for label, _ in index.search(q, k)]


@pytest.fixture
def saved(tmp_path: Path) -> tuple[LocalVectorIndex, dict[int, np.ndarray], Path]:
    folder = tmp_path / "vec"
    index = LocalVectorIndex(folder, DIM, **ANN)
    vecs = unit(500)
    index.add(list(range(500)), vecs)
    index.save(1)
    return index, dict(enumerate(vecs)), folder


def test_a_save_appends_only_what_changed(saved: tuple[LocalVectorIndex, dict[int, np.ndarray],
                                                       Path]) -> None:
    index, model, folder = saved
    before = manifest(folder)
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    new = unit(3, seed=1)
    index.add([7, 8, 900], new)  # two replaced, one new
    index.remove([9])
    index.save(2)
    assert manifest(folder) == before  # no snapshot: the same files
    after = {p.name: p.stat().st_size for p in folder.iterdir()}
    f32, log = before["files"]["vectors"], before["files"]["log"]
    assert after[f32] - sizes[f32] == 3 * DIM * 4  # three rows appended
    assert 0 < after[log] - sizes[log] < 200  # one small group of records
    assert {k: v for k, v in after.items() if k not in (f32, log)} == \
        {k: v for k, v in sizes.items() if k not in (f32, log)}
    model.update({7: new[0], 8: new[1], 900: new[2]})
    del model[9]
    again = LocalVectorIndex(folder, DIM, **ANN)
    assert again.generation == 2 and len(again) == 500 and again.ann_built
    assert again.deleted == 3  # old rows of 7, 8 and 9
    for q in unit(10, seed=2):
        # the graph is approximate: on uniform random vectors a beam may miss a neighbour
        assert len(set(top(again, q)) & set(exact(model, q, 10))) >= 8


def test_open_maps_rows_and_loads_no_float_file(
        saved: tuple[LocalVectorIndex, dict[int, np.ndarray], Path]) -> None:
    _, model, folder = saved
    again = LocalVectorIndex(folder, DIM, **ANN)
    assert again._mm is None and again._file_rows == 500  # nothing read yet
    q = unit(1, seed=3)[0]
    assert top(again, q) == exact(model, q, 10)


@pytest.mark.parametrize("cut", ["torn-frame", "half-group", "bad-crc", "junk-tail"])
def test_a_crash_during_a_save_reopens_at_the_last_commit(
        saved: tuple[LocalVectorIndex, dict[int, np.ndarray], Path], cut: str) -> None:
    index, _, folder = saved
    index.add([1000], unit(1, seed=4))
    index.save(2)
    log = file_of(folder, "log")
    good = log.stat().st_size
    index.add([1001], unit(1, seed=5))
    index.remove([3])
    index.save(3)
    data = log.read_bytes()
    if cut == "torn-frame":
        log.write_bytes(data[:-3])
    elif cut == "half-group":
        log.write_bytes(data[: good + (len(data) - good) // 2])
    elif cut == "bad-crc":
        log.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    else:
        log.write_bytes(data[:good] + b"\x07" * 40)
    again = LocalVectorIndex(folder, DIM, **ANN)
    assert again.generation == 2 and len(again) == 501
    assert top(again, unit(1, seed=4)[0], 1) == [1000]
    assert 1001 not in top(again, unit(1, seed=5)[0], 5)
    # The next save overwrites the torn tail and the log stays readable.
    again.add([1002], unit(1, seed=6))
    again.save(4)
    third = LocalVectorIndex(folder, DIM, **ANN)
    assert third.generation == 4 and len(third) == 502
    assert top(third, unit(1, seed=6)[0], 1) == [1002]


def test_rows_written_without_their_commit_are_dead_space(
        saved: tuple[LocalVectorIndex, dict[int, np.ndarray], Path]) -> None:
    """A crash after the rows reached the file but before the log commit."""
    index, _, folder = saved
    index.add([2000, 2001], unit(2, seed=7))
    index._write_pending(sync=True)  # the first half of a save, then "kill -9"
    again = LocalVectorIndex(folder, DIM, **ANN)
    assert again.generation == 1 and len(again) == 500 and again.deleted == 2
    again.add([2002], unit(1, seed=8))
    again.save(2)
    third = LocalVectorIndex(folder, DIM, **ANN)
    assert third.generation == 2 and len(third) == 501
    assert top(third, unit(1, seed=8)[0], 1) == [2002]
    assert 2000 not in top(third, unit(2, seed=7)[0], 3)


@pytest.mark.parametrize("damage", ["header", "epoch", "rows-past-end", "no-log", "no-f32",
                                    "labels", "old-format", "dimension"])
def test_files_that_cannot_be_trusted_open_empty_at_minus_one(
        saved: tuple[LocalVectorIndex, dict[int, np.ndarray], Path], damage: str) -> None:
    index, _, folder = saved
    index.add([1000], unit(1, seed=4))
    index.save(2)
    log = file_of(folder, "log")
    if damage == "header":
        log.write_bytes(b"garbage!" + log.read_bytes()[8:])
    elif damage == "epoch":
        log.write_bytes(vector_log.header("0" * 16) + log.read_bytes()[vector_log.HEADER.size:])
    elif damage == "rows-past-end":
        f32 = file_of(folder, "vectors")
        f32.write_bytes(f32.read_bytes()[: 400 * DIM * 4])
    elif damage == "no-log":
        log.unlink()
    elif damage == "no-f32":
        file_of(folder, "vectors").unlink()
    elif damage == "labels":
        file_of(folder, "labels").write_bytes(b"\x93NUMPY garbage")
    elif damage in ("old-format", "dimension"):
        m = manifest(folder)
        if damage == "old-format":
            del m["format"]
        else:
            m["dimension"] = DIM + 1
        (folder / "manifest.json").write_text(json.dumps(m))
    fresh = LocalVectorIndex(folder, DIM, **ANN)
    assert fresh.generation == -1 and len(fresh) == 0
    assert fresh.search(unit(1)[0], 3) == []
    fresh.add([1], unit(1))  # the rebuild writes a snapshot of its own
    fresh.save(5)
    assert LocalVectorIndex(folder, DIM, **ANN).generation == 5


def test_the_old_format_is_rebuilt_and_its_files_removed(tmp_path: Path) -> None:
    folder = tmp_path / "vec"
    folder.mkdir()
    np.save(folder / "vectors.npy", unit(3))
    np.save(folder / "labels.npy", np.arange(3, dtype=np.int64))
    (folder / "hnsw.bin").write_bytes(b"\0" * 64)
    (folder / "manifest.json").write_text(json.dumps(
        {"generation": 3, "dimension": DIM, "count": 3, "ann": True}))
    old = LocalVectorIndex(folder, DIM)
    assert old.generation == -1 and len(old) == 0
    old.add([1, 2, 3], unit(3))
    old.save(4)
    assert manifest(folder)["format"] == FORMAT
    assert not {"vectors.npy", "labels.npy", "hnsw.bin"} & {p.name for p in folder.iterdir()}
    assert LocalVectorIndex(folder, DIM).generation == 4


def test_many_changes_take_a_snapshot_and_results_hold(tmp_path: Path) -> None:
    folder = tmp_path / "vec"
    index = LocalVectorIndex(folder, DIM, **ANN, compact_changes=40)
    model = dict(enumerate(unit(300)))
    index.add(list(model), np.stack(list(model.values())))
    index.save(1)
    first = manifest(folder)["epoch"]
    rng = np.random.default_rng(11)
    for gen in range(2, 30):
        labels = [int(x) for x in rng.integers(0, 400, 3)]
        vecs = unit(3, seed=100 + gen)
        index.add(labels, vecs)
        model.update(zip(labels, vecs, strict=True))
        index.save(gen)
    assert manifest(folder)["epoch"] != first
    assert len(index._delta) < 40
    assert not [p for p in folder.iterdir() if first in p.name]  # the old epoch is gone
    again = LocalVectorIndex(folder, DIM, **ANN)
    assert again.generation == 29 and len(again) == len(model)
    for q in unit(10, seed=12):
        # the graph is approximate: on uniform random vectors a beam may miss a neighbour
        assert len(set(top(again, q)) & set(exact(model, q, 10))) >= 8


def test_dead_rows_are_rewritten_away(tmp_path: Path) -> None:
    folder = tmp_path / "vec"
    index = LocalVectorIndex(folder, DIM, **ANN, compact_dead=0.3, compact_dead_min=10)
    vecs = unit(200)
    index.add(list(range(200)), vecs)
    index.save(1)
    f32 = manifest(folder)["files"]["vectors"]
    index.remove(range(0, 200, 2))
    index.save(2)
    assert index.deleted == 0
    assert manifest(folder)["files"]["vectors"] != f32
    assert not (folder / f32).exists()
    assert (folder / manifest(folder)["files"]["vectors"]).stat().st_size == 100 * DIM * 4
    again = LocalVectorIndex(folder, DIM, **ANN)
    model = {i: vecs[i] for i in range(1, 200, 2)}
    for q in unit(5, seed=13):
        # the graph is approximate: on uniform random vectors a beam may miss a neighbour
        assert len(set(top(again, q)) & set(exact(model, q, 10))) >= 8


def test_background_compaction_on_a_big_index(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_module, "BACKGROUND_MIN", 0)
    folder = tmp_path / "vec"
    index = LocalVectorIndex(folder, DIM, **ANN, compact_changes=5)
    vecs = unit(100)
    index.add(list(range(100)), vecs)
    index.save(1)
    first = manifest(folder)["epoch"]
    index.add([1, 2, 3, 4, 5, 6], unit(6, seed=14))
    index.save(2)
    index.wait_compaction(30)
    assert index._compactor is not None and not index._compactor.is_alive()
    assert manifest(folder)["epoch"] != first and index._delta == {}
    index.add([7], unit(1, seed=15))  # writes go on after the snapshot
    index.save(3)
    again = LocalVectorIndex(folder, DIM, **ANN)
    assert again.generation == 3 and len(again) == 100
    assert top(again, unit(1, seed=15)[0], 1) == [7]


@pytest.mark.parametrize("rewrite", [False, True], ids=["snapshot", "rewrite"])
def test_searches_go_on_while_a_background_compaction_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rewrite: bool) -> None:
    """The snapshot's files take long (slowed here); searches answer meanwhile from the old
    epoch, a writer waits for the snapshot, and both end up on disk."""
    monkeypatch.setattr(local_module, "BACKGROUND_MIN", 0)
    real_write = local_module._write_durable

    def slow_write(*args: Any) -> None:
        time.sleep(0.3)
        real_write(*args)

    folder = tmp_path / "vec"
    index = LocalVectorIndex(folder, DIM, **ANN, compact_changes=5, compact_dead=0.01,
                             compact_dead_min=1 if rewrite else 10**9)
    vecs = unit(300)
    model = dict(enumerate(vecs))
    index.add(list(range(300)), vecs)
    index.save(1)
    monkeypatch.setattr(local_module, "_write_durable", slow_write)
    changed = unit(6, seed=30)
    index.add(list(range(6)), changed)
    model.update(zip(range(6), changed, strict=True))
    index.save(2)  # starts the compaction on its thread
    compactor = index._compactor
    assert compactor is not None and compactor.is_alive()
    slowest = 0.0
    while compactor.is_alive():
        q = unit(1, seed=int(time.monotonic() * 1000) % 997)[0]
        t = time.monotonic()
        got = top(index, q)
        slowest = max(slowest, time.monotonic() - t)
        assert len(set(got) & set(exact(model, q, 10))) >= 8
        if slowest > 0 and not compactor.is_alive():
            break
    assert slowest < 0.25  # the compaction takes > 1 s: searches did not wait for it
    index.add([7], unit(1, seed=31))  # writers wait for it, then go on
    model[7] = unit(1, seed=31)[0]
    index.save(3)
    index.wait_compaction(30)
    again = LocalVectorIndex(folder, DIM, **ANN)
    assert again.generation == 3 and len(again) == 300
    for label in (0, 5, 7, 100):
        assert top(again, model[label], 1) == [label]


def test_two_processes_on_one_folder_never_mix(
        saved: tuple[LocalVectorIndex, dict[int, np.ndarray], Path]) -> None:
    first, _, folder = saved
    second = LocalVectorIndex(folder, DIM, **ANN)
    first.add([5000], unit(1, seed=20))
    first.save(2)
    # second is stale (it never saw generation 2): its save is a snapshot of what it holds
    second.add([6000], unit(1, seed=21))
    second.save(3)
    reader = LocalVectorIndex(folder, DIM, **ANN)
    assert reader.generation == 3 and len(reader) == 501
    assert top(reader, unit(1, seed=21)[0], 1) == [6000]
    assert 5000 not in top(reader, unit(1, seed=20)[0], 5)
    first.remove([5000])
    first.save(4)  # not in step any more either: a snapshot again, never a log append
    reader = LocalVectorIndex(folder, DIM, **ANN)
    assert reader.generation == 4 and len(reader) == 500
    assert 6000 not in top(reader, unit(1, seed=21)[0], 5)


def test_clear_then_rebuild_spills_rows_and_replaces_the_files(
        saved: tuple[LocalVectorIndex, dict[int, np.ndarray], Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_module, "SPILL_BYTES", 1024)  # spill every few rows
    index, _, folder = saved
    old_files = set(manifest(folder)["files"].values())
    index.clear()
    vecs = unit(300, seed=30)
    for start in range(0, 300, 50):
        index.add(list(range(start, start + 50)), vecs[start:start + 50])
        assert index._rows - index._file_rows < 50  # rows went to the private file
    assert LocalVectorIndex(folder, DIM, **ANN).generation == 1  # not visible before save
    index.save(2)
    assert not old_files & {p.name for p in folder.iterdir()}
    again = LocalVectorIndex(folder, DIM, **ANN)
    assert again.generation == 2 and len(again) == 300
    model = dict(enumerate(vecs))
    for q in unit(5, seed=31):
        # the graph is approximate: on uniform random vectors a beam may miss a neighbour
        assert len(set(top(again, q)) & set(exact(model, q, 10))) >= 8


def test_filtered_graph_search_over_fetches_and_never_comes_back_short(tmp_path: Path) -> None:
    index = LocalVectorIndex(tmp_path / "vec", DIM, **ANN, filter_exact_below=0,
                             filter_exact_fraction=0)
    vecs = unit(3000, seed=40)
    index.add(list(range(3000)), vecs)
    model = dict(enumerate(vecs))
    for share, seed in ((0.5, 41), (0.05, 42), (0.003, 43)):
        allowed = {int(x) for x in np.flatnonzero(np.random.default_rng(seed).random(3000)
                                                  < share)}
        sub = {x: model[x] for x in allowed}
        for q in unit(5, seed=seed):
            got = [label for label, _ in index.search(q, 10, allowed)]
            assert set(got) <= allowed and len(got) == min(10, len(allowed))
            want = exact(sub, q, 10)
            assert len(set(got) & set(want)) >= 0.8 * len(want)


def test_a_small_graph_reaches_every_vector(tmp_path: Path) -> None:
    """Built with several threads, a 300-vector usearch graph left a few nodes unreachable
    (about 1 query in 15 missed a true neighbour); the first GRAPH_SEED go in one thread."""
    for seed in range(10):
        index = LocalVectorIndex(tmp_path / f"vec{seed}", DIM, **ANN)
        index.add(list(range(300)), unit(300, seed=seed))
        index.save(1)
        graph = index._graph
        assert graph is not None
        graph.expansion_search = 512
        found = graph.search(unit(1, seed=99)[0], 300, threads=1).keys
        assert len(found) == 300

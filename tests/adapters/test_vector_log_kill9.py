"""A writer process killed with SIGKILL at random moments (mid-save, mid-snapshot,
mid-compaction on its background thread) never loses an acknowledged save and never opens
a half-written one: each reopen lands on the last acknowledged generation or the one in
flight, holding exactly what that generation's steps wrote, and the next writer resumes
from it. This is the crash the in-process tests of test_vector_log.py only imitate."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.vectors.local import LocalVectorIndex
from tests.adapters.kill9_writer import DIM, last_ack, model_after

WRITER = Path(__file__).with_name("kill9_writer.py")


def _run_and_kill(folder: Path, progress: Path, rng: random.Random, background: bool) -> None:
    """Start a writer, let it acknowledge a few more saves, then SIGKILL it at a random
    moment."""
    before = last_ack(progress)
    args = [sys.executable, str(WRITER), str(folder), str(progress)]
    proc = subprocess.Popen(args + (["--background"] if background else []),
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while last_ack(progress) <= before + 2:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the writer made no progress in 60 s"
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.25))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL  # killed, not ended on its own


def _assert_holds(index: LocalVectorIndex, model: dict[int, np.ndarray]) -> None:
    assert len(index) == len(model)
    for label, vec in model.items():  # each vector exactly as written, found by itself
        hits = index.search(vec, 1, allowed={label})
        assert hits and hits[0][0] == label and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    for label in set(range(300)) - set(model):
        assert index.search(np.ones(DIM, np.float32), 1, allowed={label}) == []
    for label, vec in list(model.items())[:20]:  # and through the graph, unfiltered
        assert index.search(vec, 1)[0][0] == label


@pytest.mark.parametrize("background", [False, True], ids=["inline", "background"])
def test_a_killed_writer_reopens_at_an_acknowledged_generation(tmp_path: Path,
                                                               background: bool) -> None:
    folder, progress = tmp_path / "vec", tmp_path / "acks"
    rng = random.Random(17 + background)
    opened = []
    for _ in range(8):
        _run_and_kill(folder, progress, rng, background)
        acked = last_ack(progress)
        index = LocalVectorIndex(folder, DIM, ann_threshold=0)
        generation = index.generation
        opened.append((acked, generation))
        # durable once acknowledged; at most the one save in flight beyond that
        assert acked <= generation <= acked + 1, opened
        _assert_holds(index, model_after(generation))
        del index
    assert last_ack(progress) > 20  # the runs got somewhere (and snapshots were taken)

    # What the kills left behind (files of snapshots that never reached the manifest) goes
    # with the next snapshot once it is older than any writer could still be working on.
    old = time.time() - 2 * 3600
    for name in os.listdir(folder):
        os.utime(folder / name, (old, old))
    index = LocalVectorIndex(folder, DIM, ann_threshold=0)
    index.compact()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(os.listdir(folder)) == sorted([".lock", "manifest.json",
                                                 *manifest["files"].values()])
    _assert_holds(index, model_after(index.generation))

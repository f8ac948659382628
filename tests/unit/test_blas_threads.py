"""Opening an engine limits numpy's BLAS threads (SEMSEARCH_BLAS_THREADS), and adapter
training lifts the limit only for its own duration. Each case runs in a fresh interpreter:
the limit is process-wide, so it cannot be observed cleanly inside the test process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semsearch.runtime.blas import blas_threads

PROBE = """
import json, os
from semsearch.runtime.blas import all_blas_threads, blas_threads, limit_blas_threads
from semsearch.wiring import open_engine
seen = {"before": blas_threads()}
engine = open_engine()
seen["opened"] = blas_threads()
with all_blas_threads():
    seen["training"] = blas_threads()
seen["after"] = blas_threads()
engine.close()
print(json.dumps(seen))
"""

pytestmark = pytest.mark.skipif(blas_threads() is None,
                                reason="threadpoolctl finds no BLAS library under numpy")


def _probe(tmp_path: Path, **env: str) -> dict[str, int]:
    run = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "SEMSEARCH_HOME": str(tmp_path),
                                           "OPENBLAS_NUM_THREADS": "2",
                                           "SEMSEARCH_CACHE_URL": "none", **env})
    assert run.returncode == 0, run.stderr[-2000:]
    seen: dict[str, int] = json.loads(run.stdout.strip().splitlines()[-1])
    return seen


def test_opening_an_engine_limits_blas_to_one_thread(tmp_path: Path) -> None:
    seen = _probe(tmp_path)
    assert seen["before"] == 2  # numpy's own choice, as the variable set it
    assert seen["opened"] == 1
    assert seen["training"] == (os.cpu_count() or 1)
    assert seen["after"] == 1  # back to the limit once training ends


def test_the_setting_chooses_the_limit_and_zero_leaves_numpy_alone(tmp_path: Path) -> None:
    assert _probe(tmp_path / "three", SEMSEARCH_BLAS_THREADS="3")["opened"] == 3
    assert _probe(tmp_path / "zero", SEMSEARCH_BLAS_THREADS="0")["opened"] == 2


@pytest.mark.parametrize(("variable", "value"), [("SEMSEARCH_BLAS_THREADS", "-1"),
                                                  ("SEMSEARCH_EMBEDDER_WORKERS", "0"),
                                                  ("SEMSEARCH_BATCH_WORKERS", "-1"),
                                                  ("SEMSEARCH_CACHE_WRITE_DELAY_MS", "-5")])
def test_a_bad_thread_setting_is_refused_with_a_clear_error(tmp_path: Path, variable: str,
                                                           value: str) -> None:
    run = subprocess.run([sys.executable, "-m", "semsearch", "collections"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "SEMSEARCH_HOME": str(tmp_path), variable: value})
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    assert variable.removeprefix("SEMSEARCH_").lower() in run.stderr.lower()

"""How many threads numpy's BLAS may use in a process that serves searches.

Why limit it: the matrix products of a search are small (one query against the rows of an
exact dense search, the rescoring of a few hundred graph candidates). OpenBLAS still splits
each over every core, and its idle threads spin while they wait for the next product, so a
server's searches fight its own model calls and everything else on the machine for the
cores. Measured on 2 cores (`bench/search_overhead.py`, the model excluded): an exact
dense search took 4.98 ms with numpy's default against 0.85 ms on one thread; under load
hybrid p99 fell from 110 to 13 ms (bench/RESULTS.md, issue 17). The model has its own
thread pool (onnxruntime), which this leaves alone.

So opening an engine sets BLAS to ``SEMSEARCH_BLAS_THREADS`` (default 1; 0 leaves numpy's
own choice) for the whole process. The one job that gains from more threads, training a
query adapter (large dense products, no concurrent searches), lifts the limit for its
duration with :func:`all_blas_threads`."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from typing import Any

_lock = threading.Lock()


@functools.cache
def _controller() -> Any:
    """threadpoolctl's view of the BLAS libraries loaded in this process (numpy's), made
    once: finding them walks the loaded libraries (a few ms)."""
    import numpy  # noqa: F401  (load numpy's BLAS so the controller sees it)
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def blas_threads() -> int | None:
    """Threads numpy's BLAS uses now (the largest over its libraries), or None if
    threadpoolctl finds none."""
    counts = [lib.num_threads for lib in _controller().select(user_api="blas").lib_controllers]
    return max(counts) if counts else None


def limit_blas_threads(threads: int) -> None:
    """Let BLAS use ``threads`` threads from now on, in every thread of this process;
    0 leaves it as it is."""
    if threads > 0:
        with _lock:
            _controller().select(user_api="blas").limit(limits=threads)


@contextlib.contextmanager
def all_blas_threads() -> Iterator[None]:
    """Every core for BLAS until the block ends, then the limit in force before it.
    Process-wide like the limit: for offline jobs, not for a request handler."""
    with _lock:
        before = blas_threads()
        _controller().select(user_api="blas").limit(limits=os.cpu_count() or 1)
    try:
        yield
    finally:
        if before is not None:
            limit_blas_threads(before)

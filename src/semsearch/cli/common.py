"""Helpers every command uses: open the engine, show progress, print JSON."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=None))


@contextmanager
def _engine() -> Iterator[Any]:
    from semsearch.config import Settings
    from semsearch.wiring import open_engine

    engine = open_engine(Settings())
    try:
        yield engine
    finally:
        engine.close()


@contextmanager
def _progress(total: int | None, desc: str, unit: str) -> Iterator[Callable[[int], None]]:
    """A progress bar drawn at the first progress, not before: an error found while
    checking the input is then printed alone, without a bar above it."""
    from tqdm import tqdm

    disable = os.environ.get("SEMSEARCH_NO_PROGRESS") == "1"
    bar: Any = None

    def tick(n: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable,
                       dynamic_ncols=True)
        bar.update(n)

    try:
        yield tick
    finally:
        if bar is not None:
            bar.close()

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
    from tqdm import tqdm

    disable = os.environ.get("SEMSEARCH_NO_PROGRESS") == "1"
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable,
              dynamic_ncols=True) as bar:
        yield bar.update

"""Helpers every command uses: open the engine, show progress, print JSON."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click


def _echo_json(obj: Any) -> None:
    click.echo(json.dumps(obj, ensure_ascii=False, indent=None))


@contextmanager
def _engine(executor: str = "local") -> Iterator[Any]:
    from semsearch.config import Settings
    from semsearch.wiring import close_executor, open_engine

    engine = open_engine(Settings(), executor=executor)
    try:
        yield engine
    finally:
        try:
            engine.close()
        finally:
            close_executor(engine)


executor_option = click.option(
    "--executor", default="local", show_default=True, metavar="local|ray|ray://HOST:PORT",
    help="where texts are embedded: in this process, on a local Ray started for the run, "
    "or on a Ray cluster (Ray Client address); needs the ray extra")


class Progress:
    """A progress bar drawn at the first progress, not before: an error found while
    checking the input is then printed alone, without a bar above it. Call it with the
    items done; ``set_total`` gives the total once it is known."""

    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self._total, self._desc, self._unit = total, desc, unit
        from semsearch.config import Settings

        self._disable = Settings().no_progress
        self._bar: Any = None

    def set_total(self, total: int | None) -> None:
        self._total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def __call__(self, n: int) -> None:
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=self._total, desc=self._desc, unit=self._unit,
                             file=sys.stderr, disable=self._disable, dynamic_ncols=True)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextmanager
def _progress(total: int | None, desc: str, unit: str) -> Iterator[Progress]:
    bar = Progress(total, desc, unit)
    try:
        yield bar
    finally:
        bar.close()

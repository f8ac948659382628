"""``semsearch serve`` (the HTTP API under uvicorn) and ``semsearch keys`` (API keys).

Thin like the rest of the CLI: parse, call one thing, print. Heavy imports stay inside the
commands so ``semsearch --help`` stays instant."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

APP_FACTORY = "semsearch.api.app:create_app"


@click.command()
@click.option("--host", default=None,
              help="bind address  [default: SEMSEARCH_HOST, else 127.0.0.1]")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="port  [default: SEMSEARCH_PORT, else 8000]")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="worker processes; each loads its own copy of the model")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--batching/--no-batching", default=None,
              help="gather concurrent requests' texts into shared model calls  [default: on; "
                   "SEMSEARCH_BATCH_MAX_TEXTS=0 turns it off]")
def serve(host: str | None, port: int | None, workers: int, log_level: str,
          batching: bool | None) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs; probes at /healthz and /readyz).

    With any API key created (semsearch keys create) every data endpoint needs one; only the
    probes, the search page at /, /docs and /openapi.json stay open. Running servers pick up
    keys created or revoked without a restart."""
    import os

    import uvicorn

    from semsearch.api.auth import KeyStore
    from semsearch.config import Settings
    from semsearch.wiring import make_key_storage

    if batching is False:  # the app factory (in every worker) reads the settings anew
        os.environ["SEMSEARCH_BATCH_MAX_TEXTS"] = "0"
    elif batching and Settings().batch_max_texts == 0:  # on, at the default size
        os.environ["SEMSEARCH_BATCH_MAX_TEXTS"] = str(
            Settings.model_fields["batch_max_texts"].default)
    settings = Settings()
    host = host or settings.host
    # Read the keys once here too: a broken file (or an unreachable database) fails now,
    # not in every worker.
    checked = KeyStore(make_key_storage(settings))
    enabled = checked.enabled
    checked.close()
    if not enabled and not _is_loopback(host):
        click.echo(f"warning: serving on {host} with no API keys: anyone who can reach it can "
                   "read, write and drop collections; create one with: semsearch keys "
                   "create NAME --scope '*:admin'", err=True)
    # The import string (not an app object) is what lets uvicorn start several workers;
    # each worker builds its own app, reading the same SEMSEARCH_* settings.
    uvicorn.run(APP_FACTORY, factory=True, host=host,
                port=settings.port if port is None else port, workers=workers,
                log_level=log_level, log_config=_log_config(log_level))


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging set-up plus semsearch's own logger (key reloads, unexpected errors),
    so those lines carry a level and follow --log-level like uvicorn's."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["semsearch"] = {"handlers": ["default"], "level": level.upper(),
                                      "propagate": False}
    return config


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parse_scope(text: str) -> tuple[str, str]:
    from semsearch.api.auth import LEVELS

    collection, sep, level = text.rpartition(":")
    if not sep or not collection or level not in LEVELS:
        raise click.BadParameter(f"{text!r}: use COLLECTION:LEVEL with LEVEL one of "
                                 f"{', '.join(LEVELS)}, e.g. docs:read or '*:admin'",
                                 param_hint="--scope")
    return collection, level


@contextmanager
def _key_store() -> Iterator[Any]:
    """The keys where the settings keep them: the home's file, or the shared database."""
    from semsearch.api.auth import KeyStore
    from semsearch.config import Settings
    from semsearch.wiring import make_key_storage

    store = KeyStore(make_key_storage(Settings()))
    try:
        yield store
    finally:
        store.close()


def _where(store: Any) -> str:
    """The file's path as before, or which table of which database."""
    where: str = store.where
    return where.removeprefix("file ")


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (only their SHA-256 hashes are stored).

    Running servers see every change on their next request: no restart."""


@keys.command(name="create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, required=True, metavar="COLLECTION:LEVEL",
              help="grant LEVEL (read < write < admin) on COLLECTION, '*' for every "
                   "collection; repeatable")
def keys_create(name: str, scopes: tuple[str, ...]) -> None:
    """Create (or replace) the key NAME and print it, once."""
    granted = dict(_parse_scope(s) for s in scopes)
    with _key_store() as store:
        key = store.create(name, granted)
        click.echo(key)
        click.echo(f"note: this is the only time the key is shown; {_where(store)} keeps only "
                   "its SHA-256 hash. Running servers accept it from now on.", err=True)


@keys.command(name="revoke")
@click.argument("name")
def keys_revoke(name: str) -> None:
    """Delete the key NAME: running servers refuse it (401) from their next request on."""
    with _key_store() as store:
        store.revoke(name)  # an unknown name: NotFoundError, exit 2 with the names there are
        click.echo(f"revoked {name!r}", err=True)
        if not store.enabled:
            click.echo(f"warning: {_where(store)} holds no key now: the API is open to anyone "
                       "who can reach it; create one with: semsearch keys create NAME "
                       "--scope '*:admin'", err=True)


@keys.command(name="list")
def keys_list() -> None:
    """List key names and their scopes (never the keys or their hashes)."""
    with _key_store() as store:
        entries = store.entries
        where = _where(store)
    if not entries:
        click.echo(f"no API keys in {where}; the API is open to anyone who can reach it")
        return
    for e in entries:
        scopes = ", ".join(f"{c}:{lvl}" for c, lvl in sorted(e["scopes"].items()))
        click.echo(f"{e['name']}: {scopes}")

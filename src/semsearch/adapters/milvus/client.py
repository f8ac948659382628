"""One Milvus connection per process, with the habits a remote index needs: connect lazily
(an engine opens even while Milvus is down; the first use says so), bound every call by a
timeout (pymilvus otherwise retries an unreachable server for minutes), and turn driver
exceptions into one-line ``BackendError``s that name the server, never the token."""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from semsearch.errors import BackendError, InputError

log = logging.getLogger("semsearch.milvus")
T = TypeVar("T")
_SCHEMES = {"milvus": "http", "milvus+http": "http", "milvus+https": "https"}
_counter = itertools.count()
# How pymilvus and gRPC word a server that is not there (down, restarting, unroutable).
# A timeout is not among them: a slow server is there, and its connection stays.
_UNREACHABLE = ("server unavailable", "fail connecting", "failed to connect",
                "connection refused", "unavailable", "socket closed")


def pymilvus() -> Any:
    """The pymilvus module, imported without its pkg_resources deprecation warning (pymilvus
    2.4 imports pkg_resources at import time; the milvus extra pins setuptools < 81)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pymilvus as module
    return module


def parse_url(url: str) -> tuple[str, str]:
    """``milvus://host:19530[/database]`` -> (pymilvus uri, database name)."""
    parts = urlsplit(url.strip())
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise InputError(f"SEMSEARCH_VECTOR_INDEX {url!r:.200} is not a Milvus URL; use "
                         "milvus://host:19530[/database] (milvus+https:// for TLS)")
    if parts.username or parts.password:
        raise InputError("SEMSEARCH_VECTOR_INDEX: put Milvus credentials in "
                         "SEMSEARCH_MILVUS_TOKEN (or _FILE), not in the URL")
    try:
        port = parts.port or (443 if scheme == "https" else 19530)
    except ValueError:
        raise InputError(f"SEMSEARCH_VECTOR_INDEX {url!r:.200}: the port is not a number "
                         "from 1 to 65535") from None
    database = unquote(parts.path.strip("/")) or "default"
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", database):
        raise InputError(f"SEMSEARCH_VECTOR_INDEX: {database!r:.100} is not a Milvus database "
                         "name (letters, digits and '_', not starting with a digit)")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{scheme}://{host}:{port}", database


# gRPC backs off reconnecting to an address that failed, up to two minutes, and shares that
# state between every channel to the address: a Milvus back from a restart would stay
# unreachable to this process for as long. pymilvus 2.4 takes no channel options, so its
# channels get two here: reconnect at least every second, each channel on its own.
_CHANNEL_OPTIONS = [("grpc.max_reconnect_backoff_ms", 1000),
                    ("grpc.use_local_subchannel_pool", 1)]


class _GrpcWithOptions:
    """The grpc module as pymilvus's handler sees it, with our options on its channels."""

    def __init__(self, grpc: Any) -> None:
        self._grpc = grpc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grpc, name)

    def insecure_channel(self, target: str, options: Any = None, **kw: Any) -> Any:
        return self._grpc.insecure_channel(target, [*(options or []), *_CHANNEL_OPTIONS], **kw)

    def secure_channel(self, target: str, credentials: Any, options: Any = None,
                       **kw: Any) -> Any:
        return self._grpc.secure_channel(target, credentials,
                                         [*(options or []), *_CHANNEL_OPTIONS], **kw)


def _bound_reconnect_backoff() -> None:
    from pymilvus.client import grpc_handler

    if not isinstance(grpc_handler.grpc, _GrpcWithOptions):
        grpc_handler.grpc = _GrpcWithOptions(grpc_handler.grpc)


def milvus_name(prefix: str, name: str, *, exact: bool = False) -> str:
    """A Milvus name for a semsearch name: Milvus allows letters, digits and '_' only, so
    other characters become '_' and a hash of the original keeps two names apart. With
    ``exact`` a name that needs no change keeps its form (aliases: what people type)."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", name)[:120]
    if exact and safe == name:
        return f"{prefix}{safe}"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]
    return f"{prefix}{safe}_{digest}"


class Milvus:
    """A lazily opened pymilvus connection (an ORM alias of its own) to one database."""

    def __init__(self, url: str, *, token: str = "", timeout: float = 10.0,
                 prefix: str = "semsearch_") -> None:
        self.uri, self.database = parse_url(url)
        self.shown = self.uri if self.database == "default" else f"{self.uri}/{self.database}"
        self.prefix = prefix
        # Whole seconds: pymilvus bounds its retries by a timeout only when it is an int; a
        # float one is passed to gRPC but the retry loop then runs 75 times (minutes).
        self.timeout = max(1, round(timeout))
        self._token = token
        self._alias = f"semsearch-{next(_counter)}"
        self._lock = threading.Lock()
        self._connected = False

    def connect(self) -> str:
        """The connection's alias, connecting first if needed."""
        with self._lock:
            if self._connected:
                return self._alias
            pm = pymilvus()
            MilvusException, connections = pm.MilvusException, pm.connections
            # pymilvus logs every failed call at ERROR with a page of gRPC detail; the
            # BackendError raised here says it in one line.
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
            _bound_reconnect_backoff()
            try:
                connections.connect(alias=self._alias, uri=self.uri, token=self._token,
                                    db_name=self.database, timeout=self.timeout)
            except MilvusException as exc:
                raise self._error("connecting", exc) from None
            except Exception as exc:  # grpc's own, an unresolvable host, a bad TLS setup
                raise BackendError(f"Milvus at {self.shown} cannot be reached: "
                                   f"{type(exc).__name__}: {exc}"[:500]) from None
            self._connected = True
            return self._alias

    def call(self, what: str, fn: Callable[[str], T]) -> T:
        """``fn(alias)`` with driver errors turned into a BackendError about ``what``."""
        alias = self.connect()
        from pymilvus import MilvusException

        try:
            return fn(alias)
        except MilvusException as exc:
            error = self._error(what, exc)
            if "cannot be reached" in str(error):
                self._reset()
            raise error from None
        except BackendError:
            raise
        except Exception as exc:  # grpc errors pymilvus lets through (a cut stream)
            self._reset()
            raise BackendError(f"Milvus at {self.shown} failed {what}: "
                               f"{type(exc).__name__}: {exc}"[:500]) from None

    def _reset(self) -> None:
        """Forget a connection that failed: a gRPC channel to a server that went away backs
        off its reconnects for up to two minutes, so the next call opens a new one and
        finds a restarted server at once."""
        self.close()

    def _error(self, what: str, exc: Any) -> BackendError:
        code = getattr(exc, "code", None)
        message = str(getattr(exc, "message", "") or exc).strip()
        if self._token:
            message = message.replace(self._token, "***")
        lowered = message.lower()
        if code == 2 or any(sign in lowered for sign in _UNREACHABLE):
            return BackendError(f"Milvus at {self.shown} cannot be reached (while {what}); "
                                "is it running and is SEMSEARCH_VECTOR_INDEX right?")
        if code in (1800, 1801) or ("auth" in lowered and "fail" in lowered):
            return BackendError(f"Milvus at {self.shown} refused the credentials (while "
                                f"{what}): check SEMSEARCH_MILVUS_TOKEN")
        return BackendError(f"Milvus at {self.shown} failed {what}: {message}"[:600])

    def ping(self) -> bool:
        """Whether Milvus answers now: cheap, never raises (what /readyz asks). A slow answer
        is a no, but never tears down the connection the searches in flight are using."""
        try:
            pymilvus().utility.list_collections(timeout=min(self.timeout, 2),
                                                using=self.connect())
            return True
        except Exception:
            return False

    def close(self) -> None:
        with self._lock:
            if self._connected:
                from pymilvus import connections

                try:
                    connections.disconnect(self._alias)
                except Exception:  # already gone; nothing to release
                    log.debug("disconnecting from Milvus failed", exc_info=True)
                self._connected = False


def aliases_of(collection: str, using: str, timeout: int) -> list[str]:
    """The aliases on ``collection``, from its description: Milvus 2.3's ListAliases
    ignores the connection's database and fails outside ``default``."""
    described = pymilvus().Collection(collection, using=using,
                                      timeout=timeout).describe(timeout=timeout)
    return [str(a) for a in described.get("aliases") or ()]

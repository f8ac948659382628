"""API keys with per-collection scopes. Only SHA-256 hashes are stored; a key is shown once
when it is created. With no key configured the API is open (the embedded default on
loopback); with any key configured every data endpoint needs one (``PUBLIC_PATHS`` do not).

A running server sees changes to the keys file without a restart: every authentication
stats the file (a microsecond) and re-reads it when its inode, size or modification time
changed. A file that turns unreadable or invalid keeps the last good keys in force, and the
error is logged once per change, so a bad edit never locks everyone out or fails requests.

Keys file: ``{"keys": [{"name": "ci", "sha256": "...", "scopes": {"*": "admin",
"docs": "read"}}]}``; levels: read < write < admin; "*" covers every collection."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semsearch.api.errors import ApiError
from semsearch.errors import InputError, NotFoundError

log = logging.getLogger("semsearch.api")

LEVELS = {"read": 1, "write": 2, "admin": 3}

# What answers without a key even when keys are configured. Each carries no data, and a
# browser cannot attach a key to a page load: the probes, the search page (its every call goes
# through the keyed API), and the API documentation with its schema and its local assets.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/docs/assets/{name}",
                          "/openapi.json"})

_Signature = tuple[int, int, int, int, int] | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: dict[str, str]

    def allows(self, collection: str | None, level: str) -> bool:
        need = LEVELS[level]
        granted = [self.scopes.get("*")]
        if collection is not None:
            granted.append(self.scopes.get(collection))
        return any(g is not None and LEVELS[g] >= need for g in granted)


OPEN = Principal("anonymous", {"*": "admin"})


class KeyStore:
    """The keys file, read at construction (a broken file raises there: fail at start-up)
    and re-read on change by ``authenticate`` (a broken file then keeps the last good keys)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen = self._signature()
        self._entries = self._load()

    def _signature(self) -> _Signature:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _load(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"API keys file {self.path} cannot be read: {exc}") from None
        try:
            data = json.loads(text)
            entries = list(data["keys"])
            for e in entries:
                if not isinstance(e["name"], str) or not isinstance(e["sha256"], str):
                    raise ValueError("each key needs a string 'name' and 'sha256'")
                for level in e["scopes"].values():
                    if level not in LEVELS:
                        raise ValueError(f"unknown level {level!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"API keys file {self.path} is invalid: {exc}") from None
        return entries

    def refresh(self) -> None:
        """Re-read the file if it changed since last seen (one stat when it did not)."""
        signature = self._signature()
        if signature == self._seen:
            return
        with self._lock:
            if signature == self._seen:
                return
            self._seen = signature  # a broken version is reported once, not per request
            try:
                entries = self._load()
            except InputError as exc:
                log.error("%s; keeping the %d key(s) read before; fix the file (semsearch keys "
                          "list checks it)", exc, len(self._entries))
                return
            if self._entries and not entries:
                log.warning("API keys file %s now holds no key%s: the API is open to anyone "
                            "who can reach it", self.path,
                            "" if signature is not None else " (it was removed)")
            else:
                log.info("API keys reloaded from %s: %d key(s)", self.path, len(entries))
            self._entries = entries

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Names and scopes (and hashes: never print those)."""
        return [dict(e) for e in self._entries]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, presented: str | None) -> Principal:
        self.refresh()
        if not self.enabled:
            return OPEN
        if not presented:
            raise ApiError(401, "unauthorized", "an API key is required: send "
                           "'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                           {"WWW-Authenticate": "Bearer"})
        digest = hash_key(presented)
        for e in self._entries:
            if hmac.compare_digest(e["sha256"], digest):
                return Principal(e["name"], dict(e["scopes"]))
        raise ApiError(401, "unauthorized", "unknown API key", {"WWW-Authenticate": "Bearer"})

    def create(self, name: str, scopes: dict[str, str]) -> str:
        for level in scopes.values():
            if level not in LEVELS:
                raise InputError(f"unknown scope level {level!r}; use read, write or admin")
        key = "ss_" + secrets.token_urlsafe(32)
        entries = [e for e in self._entries if e["name"] != name]
        entries.append({"name": name, "sha256": hash_key(key), "scopes": scopes})
        self._save(entries)
        return key

    def revoke(self, name: str) -> None:
        """Remove the key NAME; running servers refuse it from their next request on."""
        entries = [e for e in self._entries if e["name"] != name]
        if len(entries) == len(self._entries):
            names = ", ".join(sorted(e["name"] for e in self._entries)) or "none"
            raise NotFoundError(f"no API key named {name!r} in {self.path} (keys: {names})")
        self._save(entries)

    def _save(self, entries: list[dict[str, Any]]) -> None:
        """Write a new file and rename it over the old one: a server reading it meanwhile
        sees the old keys or the new ones, never half a file, and the new inode marks it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # mkstemp creates the file 0600 (never world-readable), with a name of its own.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(json.dumps({"keys": entries}, indent=1))
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._entries = entries
        self._seen = self._signature()


def require(principal: Principal, collection: str | None, level: str) -> None:
    if not principal.allows(collection, level):
        what = f"collection {collection!r}" if collection else "this endpoint"
        raise ApiError(403, "forbidden", f"key {principal.name!r} lacks {level} access to "
                       f"{what}")

"""API keys with per-collection scopes. Only SHA-256 hashes are stored; a key is shown once
when it is created. With no key configured the API is open (the embedded default on
loopback); with any key configured every data endpoint needs one (``PUBLIC_PATHS`` do not).

The keys live in a file in the home, or, with SEMSEARCH_STORE set, in the shared database
(``KeyStorage``). A running server sees changes without a restart: every authentication
stats the file (a microsecond) and re-reads it when its inode, size or modification time
changed; the database's table is checked at most once a second. A file that turns
unreadable or invalid, or a database that cannot be reached, keeps the last good keys in
force, and the error is logged once per change, so a bad edit never locks everyone out or
fails requests.

Keys file: ``{"keys": [{"name": "ci", "sha256": "...", "scopes": {"*": "admin",
"docs": "read"}}]}``; levels: read < write < admin; "*" covers every collection."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semsearch.api.errors import ApiError
from semsearch.errors import InputError, NotFoundError, SemsearchError
from semsearch.ports import KeyStorage

log = logging.getLogger("semsearch.api")

LEVELS = {"read": 1, "write": 2, "admin": 3}

# What answers without a key even when keys are configured. Each carries no data, and a
# browser cannot attach a key to a page load: the probes, the search page (its every call goes
# through the keyed API), and the API documentation with its schema and its local assets.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/", "/docs", "/docs/assets/{name}",
                          "/openapi.json"})

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
    """The keys, read from their storage at construction (a broken file raises there: fail at
    start-up) and re-read on change by ``authenticate`` (a broken file or an unreachable
    database then keeps the last good keys). ``source`` is a KeyStorage (a file, or the
    shared database's table: ``wiring.make_key_storage``) or a keys file's path."""

    def __init__(self, source: KeyStorage | Path) -> None:
        if isinstance(source, Path):
            from semsearch.wiring import file_key_storage

            source = file_key_storage(source)
        self.storage: KeyStorage = source
        self._lock = threading.Lock()
        self._seen = self.storage.version()
        self._entries = self._load()

    @property
    def where(self) -> str:
        return self.storage.where

    def _load(self) -> list[dict[str, Any]]:
        entries = self.storage.load()
        try:
            for e in entries:
                if not isinstance(e["name"], str) or not isinstance(e["sha256"], str):
                    raise ValueError("each key needs a string 'name' and 'sha256'")
                for level in e["scopes"].values():
                    if level not in LEVELS:
                        raise ValueError(f"unknown level {level!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"API keys {self.where} is invalid: {exc}") from None
        return entries

    def refresh(self) -> None:
        """Re-read the keys if they changed since last seen (one stat of the file, or one
        small query at most once a second, when they did not)."""
        try:
            signature = self.storage.version()
        except SemsearchError as exc:
            log.error("API keys cannot be checked (%s); keeping the %d key(s) read before",
                      exc, len(self._entries))
            return
        if signature == self._seen:
            return
        with self._lock:
            if signature == self._seen:
                return
            self._seen = signature  # a broken version is reported once, not per request
            try:
                entries = self._load()
            except SemsearchError as exc:
                log.error("%s; keeping the %d key(s) read before; fix it (semsearch keys "
                          "list checks it)", exc, len(self._entries))
                return
            if self._entries and not entries:
                log.warning("API keys %s now holds no key%s: the API is open to anyone "
                            "who can reach it", self.where,
                            "" if signature is not None else " (it was removed)")
            else:
                log.info("API keys reloaded from %s: %d key(s)", self.where, len(entries))
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
        self.storage.upsert({"name": name, "sha256": hash_key(key), "scopes": scopes})
        self._reread()
        return key

    def revoke(self, name: str) -> None:
        """Remove the key NAME; running servers refuse it from their next request on."""
        if not self.storage.delete(name):
            names = ", ".join(sorted(e["name"] for e in self._entries)) or "none"
            raise NotFoundError(f"no API key named {name!r} in {self.where} (keys: {names})")
        self._reread()

    def _reread(self) -> None:
        with self._lock:
            self._seen = self.storage.version()
            self._entries = self._load()

    def close(self) -> None:
        self.storage.close()


def require(principal: Principal, collection: str | None, level: str) -> None:
    if not principal.allows(collection, level):
        what = f"collection {collection!r}" if collection else "this endpoint"
        raise ApiError(403, "forbidden", f"key {principal.name!r} lacks {level} access to "
                       f"{what}")

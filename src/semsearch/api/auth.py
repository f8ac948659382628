"""API keys with per-collection scopes. Only SHA-256 hashes are stored; a key is shown once
when it is created. With no key configured the API is open (the embedded default on
loopback); with any key configured every endpoint but health needs one.

Keys file: ``{"keys": [{"name": "ci", "sha256": "...", "scopes": {"*": "admin",
"docs": "read"}}]}``; levels: read < write < admin; "*" covers every collection."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semsearch.api.errors import ApiError
from semsearch.errors import InputError

LEVELS = {"read": 1, "write": 2, "admin": 3}


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
    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries = self._load()

    def _load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            entries = list(data["keys"])
            for e in entries:
                for level in e["scopes"].values():
                    if level not in LEVELS:
                        raise ValueError(f"unknown level {level!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"API keys file {self.path} is invalid: {exc}") from None
        return entries

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Names and scopes (and hashes: never print those)."""
        return [dict(e) for e in self._entries]

    @property
    def enabled(self) -> bool:
        return bool(self._entries)

    def authenticate(self, presented: str | None) -> Principal:
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
        self._entries = [e for e in self._entries if e["name"] != name]
        self._entries.append({"name": name, "sha256": hash_key(key), "scopes": scopes})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never world-readable
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps({"keys": self._entries}, indent=1))
        tmp.replace(self.path)
        return key


def require(principal: Principal, collection: str | None, level: str) -> None:
    if not principal.allows(collection, level):
        what = f"collection {collection!r}" if collection else "this endpoint"
        raise ApiError(403, "forbidden", f"key {principal.name!r} lacks {level} access to "
                       f"{what}")

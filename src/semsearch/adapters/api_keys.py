"""API keys in a JSON file under the home (the embedded default).

``version`` is one stat: inode, size and times, so a server notices a new file (written
whole and renamed over the old one) within a microsecond of cost per request."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from semsearch.errors import InputError


class FileKeyStorage:
    """``KeyStorage`` over ``{"keys": [...]}`` in one file, replaced atomically on change."""

    local = True  # version() is one stat

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def where(self) -> str:
        return f"file {self.path}"

    def version(self) -> object:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def load(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"API keys file {self.path} cannot be read: {exc}") from None
        try:
            entries = list(json.loads(text)["keys"])
            if not all(isinstance(e, dict) for e in entries):
                raise ValueError("each key must be an object")
        except (ValueError, KeyError, TypeError) as exc:
            raise InputError(f"API keys file {self.path} is invalid: {exc}") from None
        return entries

    def upsert(self, entry: Mapping[str, Any]) -> None:
        entries = [e for e in self.load() if e.get("name") != entry["name"]]
        entries.append(dict(entry))
        self._save(entries)

    def delete(self, name: str) -> bool:
        entries = self.load()
        kept = [e for e in entries if e.get("name") != name]
        if len(kept) == len(entries):
            return False
        self._save(kept)
        return True

    def close(self) -> None:
        pass

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

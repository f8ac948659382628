"""How collection names and their versions are written: ``docs`` is version 1 of itself,
``docs@v2`` the next one a re-index built, and a name starts with a letter or digit."""

from __future__ import annotations

import re

from semsearch.errors import InputError

_VERSION = re.compile(r"^(?P<base>.+)@v(?P<n>\d+)$")


def validate_name(name: str) -> None:
    """Names start with a letter or digit: one starting with '-' reads as an option on
    every command line (``-c``), one starting with '.' hides its index folder."""
    ok = bool(name) and len(name) <= 64 and name[0].isalnum() and \
        all(c.isalnum() or c in "-_." for c in name)
    if not ok:
        raise InputError(f"collection name {name!r} must be 1-64 letters, digits, '-', '_' "
                         "or '.', starting with a letter or digit")


def version_of(physical: str) -> tuple[str, int]:
    """``docs@v3`` -> (``docs``, 3); a plain name is version 1 of itself."""
    m = _VERSION.match(physical)
    return (m["base"], int(m["n"])) if m else (physical, 1)


def base_version(name: str) -> str:
    """The stored name of a version: ``docs@v1`` is the collection created as ``docs``."""
    base, n = version_of(name)
    return base if n == 1 else name


def next_version(name: str, existing: list[str]) -> str:
    n = max((version_of(e)[1] for e in existing), default=1)
    return f"{name}@v{n + 1}"

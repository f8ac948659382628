"""Parsing what to sync from where: one ``SourceSpec`` (``core.sources``) per (source,
collection) pair, from CLI flags or a ``sync.toml`` with several ``[[source]]`` tables;
``wiring.make_source`` turns a spec into a SyncSource."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from semsearch.core.sources import SourceSpec as SourceSpec
from semsearch.core.sources import has_password as has_password
from semsearch.core.sources import mask_password as mask_password
from semsearch.errors import InputError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _split(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value if str(v).strip())
    raise InputError(f"expected a comma-separated string or a list, got {value!r}")


def _expand(value: Any, where: str) -> Any:
    """``${VAR}`` in strings comes from the environment, so secrets stay out of the file."""
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in os.environ:
            raise InputError(f"{where}: environment variable {m.group(1)} is not set")
        return os.environ[m.group(1)]
    return _ENV.sub(sub, value)


_KNOWN = {f.name for f in fields(SourceSpec)} - {"extra"}


def spec_from_mapping(raw: dict[str, Any], where: str) -> SourceSpec:
    raw = {k.replace("-", "_"): _expand(v, where) for k, v in raw.items()}
    if "url" in raw and "source" not in raw:
        raw["source"] = raw.pop("url")
    unknown = set(raw) - _KNOWN
    if unknown:
        raise InputError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(sorted(_KNOWN))}")
    for key in ("text", "metadata"):
        if key in raw:
            raw[key] = _split(raw[key])
    try:
        return SourceSpec(**raw).validate()
    except TypeError as exc:
        raise InputError(f"{where}: {exc}") from None


def load_sync_file(path: Path) -> list[SourceSpec]:
    """``[defaults]`` applies to every ``[[source]]``; each source names its collection."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    defaults = data.get("defaults", {})
    sources = data.get("source", [])
    if not isinstance(sources, list) or not sources:
        raise InputError(f"{path}: no [[source]] tables")
    specs = [spec_from_mapping({**defaults, **s}, f"{path} [[source]] #{i + 1}")
             for i, s in enumerate(sources)]
    seen: dict[str, str] = {}
    for s in specs:
        if s.collection in seen:
            raise InputError(f"{path}: sources {seen[s.collection]!r} and {s.label()!r} both "
                             f"write collection {s.collection!r}; give each its own")
        seen[s.collection] = s.label()
    return specs

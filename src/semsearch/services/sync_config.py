"""What to sync from where: one ``SourceSpec`` per (source, collection) pair, from CLI flags
or a ``sync.toml`` with several ``[[source]]`` tables. Pure data; ``wiring.make_source``
turns a spec into a SyncSource."""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from semsearch.errors import InputError

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True)
class SourceSpec:
    """``source`` is a SQLAlchemy URL or a path (folder, .jsonl, .csv). A SQL source reads
    ``table`` or ``query``; without ``updated_at`` it is read whole every run."""

    collection: str
    source: str
    table: str = ""
    query: str = ""
    id: str = "id"
    text: tuple[str, ...] = ("text",)
    title: str = ""
    metadata: tuple[str, ...] = ()
    updated_at: str = ""
    deleted_flag: str = ""
    lookback_seconds: float = 60.0
    batch_size: int = 256
    retries: int = 3
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sql(self) -> bool:
        return "://" in self.source

    def label(self) -> str:
        return self.name or self.collection

    def public(self) -> dict[str, Any]:
        """The spec as stored beside the collection: the password never leaves memory."""
        out = asdict(self)
        out["source"] = mask_password(self.source)
        out.pop("extra")
        return out

    def validate(self) -> SourceSpec:
        if not self.collection:
            raise InputError("a sync source needs a collection (--collection)")
        if not self.source:
            raise InputError("a sync source needs --source: a database URL or a path")
        if self.is_sql:
            if bool(self.table) == bool(self.query):
                raise InputError(f"source {self.label()!r}: give exactly one of --table and "
                                 "--query")
            if not self.text or not all(self.text):
                raise InputError(f"source {self.label()!r}: --text names the text column(s)")
        if self.batch_size < 1 or self.lookback_seconds < 0 or self.retries < 0:
            raise InputError(f"source {self.label()!r}: batch_size must be >= 1, "
                             "lookback_seconds and retries >= 0")
        return self


def mask_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def has_password(url: str) -> bool:
    return mask_password(url) != url


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

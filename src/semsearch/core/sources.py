"""What a sync reads and into which collection: a ``SourceSpec`` per (source, collection)
pair. Pure data shared by the sync service and the source adapters; parsing it from flags or
a ``sync.toml`` lives in ``services.sync_config``."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from semsearch.errors import InputError


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

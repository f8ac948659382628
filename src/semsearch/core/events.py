"""Change events: the one message format every broker carries, parsed and ordered.

A change event is one JSON object (the schema ships as ``semsearch/data/change_event.schema.json``):

    {"op": "upsert", "id": "p-1", "text": "...", "title": "...", "metadata": {...}, "version": 17}
    {"op": "delete", "id": "p-1", "version": 18}

Brokers deliver at least once and in no order across partitions or consumers, so what makes
the effect exactly-once is the version: an event is applied only when its version is newer
than the last one applied for its id. Versions are integers or RFC 3339 timestamps; a
timestamp counts as its microseconds since the Unix epoch, so one producer should keep to
one kind per id. Anything that cannot be applied raises ``InputError`` with the reason that
goes with the message to the dead-letter destination."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any, Literal

from semsearch.core.types import Document
from semsearch.core.unicode import require_unicode, shown
from semsearch.errors import InputError

OPS = ("upsert", "delete")
MAX_ID_CHARS = 512
INT64 = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class ChangeEvent:
    op: Literal["upsert", "delete"]
    id: str
    version: int  # comparable: the integer, or a timestamp's microseconds since the epoch
    title: str = ""
    text: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def document(self) -> Document:
        return Document(id=self.id, text=self.text, title=self.title,
                        metadata=dict(self.metadata))


def schema() -> dict[str, Any]:
    """The JSON Schema of one event, as shipped in the package."""
    text = resources.files("semsearch").joinpath("data/change_event.schema.json").read_text(
        encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def parse_version(value: Any) -> int:
    """An event's version as a comparable integer. Booleans are not integers here, and a
    timestamp must say its offset (RFC 3339), or two producers in two zones would disagree."""
    if isinstance(value, bool) or value is None:
        raise InputError("'version' must be an integer or an RFC 3339 timestamp")
    if isinstance(value, int):
        if not -INT64 <= value <= INT64:
            raise InputError("'version' does not fit in 64 bits")
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            when = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise InputError(f"'version' {shown(text)[:60]!r} is neither an integer nor an "
                             "RFC 3339 timestamp") from None
        if "T" not in text.upper() or when.tzinfo is None:
            raise InputError(f"'version' {shown(text)[:60]!r} is not an RFC 3339 timestamp "
                             "(a date, 'T', a time and an offset such as Z)")
        delta = when - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    raise InputError("'version' must be an integer or an RFC 3339 timestamp")


def parse_event(body: bytes | str, max_text_chars: int) -> ChangeEvent:
    """One message's body as an event, or InputError saying what is wrong with it."""
    raw = _decode(body, max_text_chars)
    op = raw.get("op")
    if op not in OPS:
        raise InputError(f"'op' must be one of {', '.join(OPS)}; got {_short(op)}")
    doc_id = raw.get("id")
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise InputError("the event has no 'id' (a non-empty string)")
    require_unicode(doc_id, "the event's id")
    if len(doc_id) > MAX_ID_CHARS:
        raise InputError(f"the event's id has {len(doc_id):,} characters; the limit is "
                         f"{MAX_ID_CHARS}")
    name = f"event for {shown(doc_id)[:80]!r}"
    if "version" not in raw:
        raise InputError(f"{name} has no 'version'")
    try:
        version = parse_version(raw["version"])
    except InputError as exc:
        raise InputError(f"{name}: {exc}") from None
    if op == "delete":
        return ChangeEvent("delete", doc_id, version)
    return _upsert(raw, doc_id, version, name, max_text_chars)


def _decode(body: bytes | str, max_text_chars: int) -> dict[str, Any]:
    limit = 4 * max_text_chars + 65_536
    if isinstance(body, bytes):
        if len(body) > limit:
            raise InputError(f"the message has {len(body):,} bytes; the limit is {limit:,} "
                             "(4 x SEMSEARCH_MAX_TEXT_CHARS + 64 KiB)")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError("the message is not UTF-8 text") from None
    try:
        raw = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"the message is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise InputError(f"the message is JSON {type(raw).__name__}, not an object")
    return raw


def _upsert(raw: Mapping[str, Any], doc_id: str, version: int, name: str,
            max_text_chars: int) -> ChangeEvent:
    text, title, metadata = raw.get("text"), raw.get("title"), raw.get("metadata")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{name} has no 'text' (an upsert needs a non-empty string)")
    if len(text) > max_text_chars:
        raise InputError(f"{name} has {len(text):,} characters of text; the limit is "
                         f"{max_text_chars:,} (SEMSEARCH_MAX_TEXT_CHARS)")
    if title is not None and not isinstance(title, str):
        raise InputError(f"{name}: 'title' must be a string")
    if metadata is not None and not isinstance(metadata, dict):
        raise InputError(f"{name}: 'metadata' must be a JSON object")
    return ChangeEvent("upsert", doc_id, version, title=title or "", text=text,
                       metadata=metadata or {})


def latest(events: Iterable[tuple[int, ChangeEvent]]) -> tuple[dict[str, tuple[int, ChangeEvent]],
                                                               list[int]]:
    """The newest event per id among ``(position, event)`` pairs, and the positions of the
    events it supersedes (an update followed by a delete ends deleted, whatever order the
    broker delivered them in; on a tie the later delivery wins, being a redelivery)."""
    best: dict[str, tuple[int, ChangeEvent]] = {}
    superseded: list[int] = []
    for pos, ev in events:
        held = best.get(ev.id)
        if held is None:
            best[ev.id] = (pos, ev)
        elif ev.version >= held[1].version:
            superseded.append(held[0])
            best[ev.id] = (pos, ev)
        else:
            superseded.append(pos)
    return best, superseded


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class Subscription:
    """Where a consumer reads events, whatever the broker: ``url``'s scheme chooses it
    (amqp/amqps: RabbitMQ, nats/tls: NATS JetStream, redis/rediss: Redis Streams)."""

    url: str
    queue: str | None = None  # RabbitMQ: the queue
    stream: str | None = None  # NATS: the JetStream stream; Redis: the stream's key
    subject: str | None = None  # NATS: the filter subject (e.g. 'docs.>')
    group: str = "semsearch"  # Redis: the consumer group; NATS: the durable consumer
    consumer: str | None = None  # this process within the group (default: host-pid)
    dead_letter: str | None = None  # where poison messages go (default: per broker)
    create: bool = False  # declare the queue / stream / group when it does not exist
    connect_timeout: float = 10.0  # seconds to connect before the broker counts as down
    # Seconds a message delivered and not acknowledged waits before another consumer may
    # take it (NATS: the consumer's ack wait; Redis: the idle time after which pending
    # entries of a vanished consumer are claimed). RabbitMQ returns a closed connection's
    # messages at once. Longer than a batch takes, or a slow batch is delivered twice
    # (harmless, versions make it a no-op, but wasted work).
    redeliver_after: float = 30.0

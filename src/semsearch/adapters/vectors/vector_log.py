"""The change log of the local dense index: what changed since its last snapshot, so that
persisting a write costs what it changed instead of rewriting the collection.

A log file is a header (magic + the snapshot's epoch, so a log is never replayed onto the
wrong snapshot) followed by framed records: ``u32 length, u32 crc32(payload), payload``.
A payload is one of

- ``b"U"`` + ``u32 count`` + ``count`` int64 labels + ``count`` int64 rows: these labels now
  live at these rows of the float32 file (an insert or a replacement);
- ``b"D"`` + ``u32 count`` + ``count`` int64 labels: these labels are gone;
- ``b"C"`` + ``i64 generation`` + ``i64 rows``: everything before is one committed save that
  reflects ``generation``; the float32 file then held at least ``rows`` rows.

Only records up to the last complete commit count: a torn or corrupt tail (a crash during an
append) is ignored, and the next save overwrites it.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

MAGIC = b"SSVLOG1\n"
HEADER = struct.Struct("<8s16s")  # magic, epoch (16 ascii bytes)
FRAME = struct.Struct("<II")
COMMIT = struct.Struct("<cqq")
Labels = npt.NDArray[np.int64]


class LogError(ValueError):
    """A log that cannot be trusted at all (wrong header or epoch): rebuild from the store."""


def header(epoch: str) -> bytes:
    return HEADER.pack(MAGIC, epoch.encode("ascii").ljust(16, b"\0")[:16])


def _frame(payload: bytes) -> bytes:
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def upserts(labels: Labels, rows: Labels) -> bytes:
    count = struct.pack("<I", len(labels))
    return _frame(b"U" + count + labels.astype("<i8").tobytes() + rows.astype("<i8").tobytes())


def deletes(labels: Labels) -> bytes:
    return _frame(b"D" + struct.pack("<I", len(labels)) + labels.astype("<i8").tobytes())


def commit(generation: int, rows: int) -> bytes:
    return _frame(COMMIT.pack(b"C", generation, rows))


@dataclass
class Replay:
    """The committed changes of a log, in order: ``ops`` holds ("U", labels, rows) and
    ("D", labels, None); ``end`` is the byte offset just past the last commit."""

    generation: int | None = None
    rows: int = 0
    end: int = HEADER.size
    commits: int = 0
    ops: list[tuple[str, Labels, Labels | None]] = field(default_factory=list)


def replay(data: bytes, epoch: str) -> Replay:
    """Parse ``data`` (a whole log file). Raises LogError when the header is not this
    snapshot's; stops quietly at the first torn or corrupt frame."""
    if len(data) < HEADER.size or data[:HEADER.size] != header(epoch):
        raise LogError("change log does not belong to this snapshot")
    out = Replay()
    pending: list[tuple[str, Labels, Labels | None]] = []
    pos = HEADER.size
    while pos + FRAME.size <= len(data):
        length, crc = FRAME.unpack_from(data, pos)
        start, stop = pos + FRAME.size, pos + FRAME.size + length
        if stop > len(data):
            break
        payload = data[start:stop]
        if zlib.crc32(payload) != crc or not payload:
            break
        kind = payload[:1]
        try:
            if kind == b"C":
                _, generation, rows = COMMIT.unpack(payload)
                out.ops.extend(pending)
                pending = []
                out.generation, out.rows, out.end = generation, rows, stop
                out.commits += 1
            elif kind in (b"U", b"D"):
                (count,) = struct.unpack_from("<I", payload, 1)
                labels = np.frombuffer(payload, "<i8", count, 5).astype(np.int64)
                rows_arr = np.frombuffer(payload, "<i8", count, 5 + 8 * count).astype(
                    np.int64) if kind == b"U" else None
                pending.append((kind.decode(), labels, rows_arr))
            else:
                break
        except (struct.error, ValueError):
            break
        pos = stop
    return out

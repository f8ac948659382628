"""Loader for BEIR-format folders (Thakur et al. 2021)::

    corpus.jsonl         {"_id": ..., "title": ..., "text": ..., "metadata": {...}}  per line
    queries.jsonl        {"_id": ..., "text": ...}  per line
    queries.<split>.jsonl  optional: used for that split instead of queries.jsonl
    qrels/<split>.tsv    header line, then ``query-id<TAB>corpus-id<TAB>score``

Every malformed input raises :class:`SourceError` with a one-line ``file:line: problem``
message. The corpus is streamed; queries and qrels are small and loaded whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from semsearch.core.types import Document
from semsearch.errors import SourceError

StrPath = str | os.PathLike[str]

CORPUS = "corpus.jsonl"
QUERIES = "queries.jsonl"
QRELS_DIR = "qrels"


def is_beir_dir(path: StrPath) -> bool:
    """True when ``path`` is a folder holding a ``corpus.jsonl`` file."""
    return (Path(path) / CORPUS).is_file()


def _require(file: Path, what: str) -> Path:
    if not file.is_file():
        raise SourceError(f"{file}: missing {what} file")
    return file


def _lines(file: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, text)`` for non-blank lines, decoding each line strictly as UTF-8
    so a bad byte is reported with its exact line."""
    try:
        handle = file.open("rb")
    except OSError as exc:
        raise SourceError(f"{file}: cannot open ({exc.strerror or exc})") from exc
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"{file}:{lineno}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column "
                    f"{exc.start + 1}); re-encode the file as UTF-8"
                ) from exc
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                yield lineno, text


def _records(file: Path) -> Iterator[tuple[int, dict[str, Any], str]]:
    """Yield ``(line number, JSON object, _id)`` for every record of a JSONL file."""
    for lineno, text in _lines(file):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SourceError(f"{file}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise SourceError(f"{file}:{lineno}: expected a JSON object, got "
                              f"{type(obj).__name__}")
        raw_id = obj.get("_id")
        if raw_id is None or isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            raise SourceError(f"{file}:{lineno}: record has no string \"_id\"")
        doc_id = str(raw_id).strip()
        if not doc_id:
            raise SourceError(f"{file}:{lineno}: empty \"_id\"")
        yield lineno, obj, doc_id


def _str_field(obj: dict[str, Any], key: str, file: Path, lineno: int) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SourceError(f"{file}:{lineno}: \"{key}\" must be a string, "
                          f"got {type(value).__name__}")
    return value


def count_corpus(path: StrPath) -> int:
    """Number of non-blank lines of ``corpus.jsonl`` (one per document in a valid file); a cheap
    byte scan without JSON parsing, meant as a progress-bar total."""
    file = _require(Path(path) / CORPUS, "corpus")
    with file.open("rb") as handle:
        return sum(1 for raw in handle if raw.strip())


def iter_corpus(path: StrPath) -> Iterator[Document]:
    """Stream the documents of ``corpus.jsonl`` in file order.

    The file's existence is checked at call time; everything else as lines are read: invalid
    UTF-8 or JSON, a missing or duplicate ``_id``, a non-string ``title``/``text``, a
    non-object ``metadata``, or a corpus without any document."""
    file = _require(Path(path) / CORPUS, "corpus")
    return _iter_corpus(file)


def _iter_corpus(file: Path) -> Iterator[Document]:
    seen: dict[str, int] = {}
    for lineno, obj, doc_id in _records(file):
        if doc_id in seen:
            raise SourceError(f"{file}:{lineno}: duplicate _id {doc_id!r} "
                              f"(first on line {seen[doc_id]})")
        seen[doc_id] = lineno
        metadata = obj.get("metadata")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            raise SourceError(f"{file}:{lineno}: \"metadata\" must be a JSON object, "
                              f"got {type(metadata).__name__}")
        yield Document(id=doc_id, text=_str_field(obj, "text", file, lineno),
                       title=_str_field(obj, "title", file, lineno), metadata=metadata)
    if not seen:
        raise SourceError(f"{file}: corpus is empty (no documents)")


def _qrels_file(path: StrPath, split: str) -> Path:
    folder = Path(path) / QRELS_DIR
    file = folder / f"{split}.tsv"
    if not file.is_file():
        splits = sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []
        hint = f" (available splits: {', '.join(splits)})" if splits else ""
        raise SourceError(f"{file}: missing qrels file for split {split!r}{hint}")
    return file


def load_qrels(path: StrPath, split: str = "test") -> dict[str, dict[str, int]]:
    """``qrels/<split>.tsv`` as query id -> document id -> graded relevance.

    The first line is skipped when it is a header (its score column is not an integer);
    fields are tab-separated (any whitespace is accepted); a repeated pair keeps the last
    score."""
    file = _qrels_file(path, split)
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for lineno, text in _lines(file):
        fields = [f.strip() for f in (text.split("\t") if "\t" in text else text.split())]
        header, first = first, False
        if header and len(fields) == 3 and not fields[2].lstrip("+-").isdigit():
            continue
        if len(fields) != 3 or not fields[0] or not fields[1]:
            raise SourceError(f"{file}:{lineno}: expected 3 fields "
                              f"'query-id corpus-id score', got {len(fields)}")
        try:
            score = int(fields[2])
        except ValueError:
            raise SourceError(f"{file}:{lineno}: score {fields[2]!r} is not an integer") from None
        qrels.setdefault(fields[0], {})[fields[1]] = score
    if not qrels:
        raise SourceError(f"{file}: no judgments")
    return qrels


def load_queries(path: StrPath, split: str = "test") -> dict[str, str]:
    """Query id -> text for the queries judged in ``qrels/<split>.tsv``, in file order.

    Reads ``queries.<split>.jsonl`` when present, else ``queries.jsonl``. A judged query
    missing from the queries file is an error (it would silently score 0)."""
    qrels = load_qrels(path, split)
    split_file = Path(path) / f"queries.{split}.jsonl"
    file = split_file if split_file.is_file() else _require(Path(path) / QUERIES, "queries")
    queries: dict[str, str] = {}
    for lineno, obj, qid in _records(file):
        if qid in qrels:
            queries[qid] = _str_field(obj, "text", file, lineno)
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise SourceError(f"{file}: {len(missing)} quer{'y' if len(missing) == 1 else 'ies'} "
                          f"judged in qrels/{split}.tsv not found (e.g. {missing[0]!r})")
    return queries

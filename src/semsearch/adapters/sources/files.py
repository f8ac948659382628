"""Corpus readers: a BEIR folder, a folder of .txt/.md/.html files, or a .jsonl/.csv file.

Every reader streams Documents and fails with a SourceError naming the file (and line) at
the first thing it cannot read, so the caller can stop with everything before it kept."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, ClassVar

from semsearch.adapters.sources import beir
from semsearch.core.types import Document
from semsearch.errors import SourceError

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".html", ".htm"}
RECORD_SUFFIXES = {".jsonl", ".csv"}
ID_FIELDS = ("_id", "id", "doc_id")


def iter_documents(path: Path) -> Iterator[Document]:
    if not path.exists():
        raise SourceError(f"{path}: no such file or directory")
    if path.is_dir():
        if beir.is_beir_dir(path):
            yield from beir.iter_corpus(path)
            return
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and p.suffix.lower() in TEXT_SUFFIXES | RECORD_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise SourceError(f"{path}: no .txt, .md, .html, .jsonl or .csv files found")
        for f in files:
            yield from _iter_file(f, path)
        return
    yield from _iter_file(path, path.parent)


def count_documents(path: Path) -> int | None:
    """A cheap total for the progress bar, or None when it would cost a full read."""
    if path.is_dir() and beir.is_beir_dir(path):
        return beir.count_corpus(path)
    if path.is_file() and path.suffix.lower() == ".jsonl":
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r}); convert it to UTF-8")\
            from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror}") from None


def _iter_file(path: Path, root: Path) -> Iterator[Document]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path)
        return
    if suffix == ".csv":
        yield from _iter_csv(path)
        return
    if suffix not in TEXT_SUFFIXES:
        raise SourceError(f"{path}: unsupported file type {suffix!r}; use .txt, .md, .html, "
                          ".jsonl, .csv or a BEIR folder")
    raw = _read_text(path)
    if not raw.strip():
        raise SourceError(f"{path}: the file is empty")
    doc_id = path.relative_to(root).as_posix() if path != root else path.name
    title, text = (_html(raw) if suffix in (".html", ".htm") else _markdown_title(raw, path))
    if not text.strip():
        raise SourceError(f"{path}: no text left after removing markup")
    yield Document(id=doc_id, title=title, text=text, metadata={"path": doc_id,
                                                                "type": suffix.lstrip(".")})


def _markdown_title(raw: str, path: Path) -> tuple[str, str]:
    match = re.match(r"\s*#\s+(.+?)\s*\n", raw)
    if match:
        return match.group(1), raw[match.end():].strip()
    return path.stem.replace("_", " ").replace("-", " "), raw.strip()


class _TextExtractor(HTMLParser):
    SKIP: ClassVar[frozenset[str]] = frozenset({"script", "style", "head", "noscript"})

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.title: list[str] = []
        self._stack: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self._stack.append(tag)
        if tag in {"p", "div", "br", "li", "h1", "h2", "h3", "h4", "tr", "section"}:
            self.parts.append("\n\n" if tag != "br" else "\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._stack:
            while self._stack and self._stack.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        if "title" in self._stack:
            self.title.append(data)
        elif not self.SKIP & set(self._stack):
            self.parts.append(data)


def _html(raw: str) -> tuple[str, str]:
    parser = _TextExtractor()
    parser.feed(raw)
    text = re.sub(r"[ \t]+", " ", "".join(parser.parts))
    text = re.sub(r"\n\s*\n\s*", "\n\n", text).strip()
    return " ".join("".join(parser.title).split()), text


def _record(obj: dict[str, Any], where: str) -> Document:
    doc_id = next((obj[f] for f in ID_FIELDS if obj.get(f) not in (None, "")), None)
    if doc_id is None:
        raise SourceError(f"{where}: no id field (one of {', '.join(ID_FIELDS)})")
    text = obj.get("text")
    if text is not None and not isinstance(text, str):
        raise SourceError(f"{where}: 'text' must be a string")
    title = obj.get("title") or ""
    meta = obj.get("metadata")
    if meta is None:
        meta = {k: v for k, v in obj.items() if k not in (*ID_FIELDS, "text", "title")}
    elif not isinstance(meta, dict):
        raise SourceError(f"{where}: 'metadata' must be an object")
    return Document(id=str(doc_id), title=str(title), text=text or "", metadata=meta)


def _iter_jsonl(path: Path) -> Iterator[Document]:
    empty = True
    try:
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise SourceError(f"{path}:{lineno}: not JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise SourceError(f"{path}:{lineno}: expected a JSON object")
                empty = False
                yield _record(obj, f"{path}:{lineno}")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not UTF-8 text; convert it to UTF-8") from None
    if empty:
        raise SourceError(f"{path}: the file is empty")


def _check_columns(path: Path, columns: list[str]) -> None:
    """Refuse a CSV whose header lacks the id or the text column once, before any row,
    instead of skipping every row with the same warning."""
    missing = []
    if not any(f in columns for f in ID_FIELDS):
        missing.append(f"an id column ({', '.join(ID_FIELDS)})")
    if "text" not in columns:
        missing.append("a 'text' column")
    if missing:
        raise SourceError(f"{path}: the header has no {' and no '.join(missing)}; its columns "
                          f"are {', '.join(repr(c) for c in columns)}; rename the columns "
                          "(title and the rest are optional; other columns become metadata)")


def _iter_csv(path: Path) -> Iterator[Document]:
    empty = True
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise SourceError(f"{path}: the file is empty")
            _check_columns(path, list(reader.fieldnames))
            for row in reader:
                empty = False
                yield _record(dict(row), f"{path}:{reader.line_num}")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: not UTF-8 text; convert it to UTF-8") from None
    except csv.Error as exc:
        raise SourceError(f"{path}: malformed CSV: {exc}") from None
    if empty:
        raise SourceError(f"{path}: no rows")

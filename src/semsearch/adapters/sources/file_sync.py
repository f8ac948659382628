"""A folder of files, or one .jsonl/.csv file, as a sync source.

Files have no update stamps a database would give, so the source is read whole every run and
reconciled: a file (or record) gone from it is deleted from the collection. A text file whose
modification time and size match the last run is not even opened; everything else is
compared by content hash, so only real changes reach the model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from semsearch.adapters.sources import beir, files
from semsearch.core.types import Document
from semsearch.errors import SourceError
from semsearch.ports import SourceRow


class FileSource:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._seen: dict[str, list[int]] = {}

    @property
    def name(self) -> str:
        return str(self._path.resolve())

    @property
    def incremental(self) -> bool:
        return False

    def check(self) -> None:
        if not self._path.exists():
            raise SourceError(f"{self._path}: no such file or directory")

    def count(self, since: Mapping[str, Any] | None) -> int | None:
        return files.count_documents(self._path)

    def head(self) -> Mapping[str, Any] | None:
        """After a read: each text file's (mtime_ns, size), to skip it next time if equal."""
        return {"files": dict(self._seen)}

    def _text_files(self) -> list[Path] | None:
        p = self._path
        if not p.is_dir() or beir.is_beir_dir(p):
            return None
        return sorted(f for f in p.rglob("*") if f.is_file()
                      and f.suffix.lower() in files.TEXT_SUFFIXES | files.RECORD_SUFFIXES
                      and not any(part.startswith(".") for part in f.relative_to(p).parts))

    def rows(self, since: Mapping[str, Any] | None,
             batch_size: int) -> Iterator[list[SourceRow]]:
        before: dict[str, Any] = dict((since or {}).get("files", {}))
        self._seen = {}
        batch: list[SourceRow] = []
        for row in self._iter(before):
            batch.append(row)
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _iter(self, before: Mapping[str, Any]) -> Iterator[SourceRow]:
        listing = self._text_files()
        if listing is None:
            for doc in files.iter_documents(self._path):
                yield SourceRow(document=doc)
            return
        if not listing:
            raise SourceError(f"{self._path}: no .txt, .md, .html, .jsonl or .csv files found")
        for f in listing:
            rel = f.relative_to(self._path).as_posix()
            if f.suffix.lower() in files.RECORD_SUFFIXES:
                for doc in files.iter_documents(f):
                    yield SourceRow(document=doc)
                continue
            st = f.stat()
            stamp = [st.st_mtime_ns, st.st_size]
            self._seen[rel] = stamp
            if before.get(rel) == stamp:
                yield SourceRow(document=Document(id=rel, text=""), unchanged=True)
                continue
            try:
                docs = list(files.iter_documents(f))
            except SourceError as exc:  # an empty or unreadable file: skip it, say why
                yield SourceRow(document=Document(id=rel, text=""), problem=str(exc))
                continue
            yield from (SourceRow(document=Document(id=rel, title=d.title, text=d.text,
                                                    metadata=d.metadata)) for d in docs)

    def close(self) -> None:
        pass

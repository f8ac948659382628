"""``Corpora`` over files: a BEIR folder, a folder of text files, or a .jsonl/.csv file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from semsearch.adapters.sources import beir, files
from semsearch.core.types import Document


class FileCorpora:
    def documents(self, path: Path) -> Iterator[Document]:
        return files.iter_documents(path)

    def count(self, path: Path) -> int | None:
        return files.count_documents(path)

    def queries(self, path: Path, split: str) -> dict[str, str]:
        return beir.load_queries(path, split)

    def qrels(self, path: Path, split: str) -> dict[str, dict[str, int]]:
        return beir.load_qrels(path, split)

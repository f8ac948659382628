"""A tiny domain for adaptation tests: documents name each topic by a long term
(``zylo3trexin``), queries by an acronym the documents never use (``zx3``), as a field's
jargon does. Neither BM25 nor the fake embedder (a hashed bag of words) can match the two;
a linear map from the acronym's coordinate to the term's can, and it is learned from the
training split's queries and holds for the test split's differently worded ones."""

from __future__ import annotations

import json
from pathlib import Path

from semsearch.core.types import Document

TOPICS = 24


def term(t: int) -> str:
    return f"zylo{t}trexin"


def acronym(t: int) -> str:
    return f"zx{t}"


def documents() -> list[Document]:
    return [Document(f"doc{t}", f"{term(t)} is discussed here in detail; {term(t)} matters.",
                     title=f"notes {term(t)}") for t in range(TOPICS)]


TRAIN = ("{a} uses", "effects of {a}")
TEST = ("what about {a} today",)


def write_beir(root: Path, *, train: bool = True, test: bool = True,
               doc_prefix: str = "doc") -> Path:
    """A BEIR folder with ``qrels/train.tsv`` (two queries per topic) and ``qrels/test.tsv``
    (one, worded apart from the training ones); ``doc_prefix`` other than the corpus's makes
    every judged document unknown to the collection."""
    folder = root / "acronyms"
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for d in documents():
            fh.write(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n")
    queries: list[tuple[str, str]] = []
    splits: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for t in range(TOPICS):
        for split, patterns in (("train", TRAIN), ("test", TEST)):
            for i, pattern in enumerate(patterns):
                qid = f"{split}-{t}-{i}"
                queries.append((qid, pattern.format(a=acronym(t))))
                splits[split].append((qid, f"{doc_prefix}{t}"))
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for qid, text in queries:
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, wanted in (("train", train), ("test", test)):
        if wanted:
            (folder / "qrels" / f"{split}.tsv").write_text(
                "query-id\tcorpus-id\tscore\n"
                + "".join(f"{q}\t{d}\t1\n" for q, d in splits[split]), encoding="utf-8")
    return folder

"""A small labelled BEIR folder on which the built-in search defaults are clearly not the
best: every query names a part code (``ZK-4417``) that only one document has in its
title, while a look-alike log page repeats it three times in its text beside other
parts' codes. Dense search cannot tell the codes apart; keyword search with the title
weighted (and keyword weighted over dense) can. Used by the tune tests (service, CLI,
API)."""

from __future__ import annotations

import json
from pathlib import Path

PARTS = ["valve", "pump", "relay", "sensor", "gasket", "bearing", "filter", "switch",
         "fuse", "hose", "clamp", "motor", "spring", "seal", "nozzle", "rotor"]
COMMON = ("Inspect the unit, record the reading in the maintenance log, and replace worn "
          "parts before the next shift.")


def code(i: int) -> str:
    return f"ZK{4400 + 17 * i}"


def documents() -> list[dict[str, str]]:
    docs = []
    for i, part in enumerate(PARTS):
        docs.append({"_id": f"proc-{i}", "title": f"{code(i)} {part} procedure",
                     "text": f"How to service the {part}. {COMMON}"})
        neighbours = [code((i + d) % len(PARTS)) for d in (1, 2, 3)]
        docs.append({"_id": f"log-{i}", "title": "Shift log",
                     "text": f"{code(i)} checked. {code(i)} noted. {code(i)} seen again "
                             f"with {' '.join(neighbours)}. {COMMON}"})
    return docs


def write_corpus(folder: Path, *, splits: tuple[str, ...] = ("train", "test")) -> Path:
    """The BEIR folder (corpus, queries, qrels of ``splits``): the query of part i asks for
    its procedure, judged relevant: proc-i. Even parts are train, odd ones test."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps(d) + "\n" for d in documents()), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": f"{code(i)} procedure"}) + "\n"
        for i in range(len(PARTS))), encoding="utf-8")
    qrels = folder / "qrels"
    qrels.mkdir(exist_ok=True)
    for split in splits:
        first = 0 if split == "train" else 1
        (qrels / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
            f"q{i}\tproc-{i}\t1\n" for i in range(first, len(PARTS), 2)), encoding="utf-8")
    return folder

"""BEIR-format loader: real collections and every malformed-input error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semsearch.adapters.sources.beir import (
    count_corpus,
    is_beir_dir,
    iter_corpus,
    load_qrels,
    load_queries,
)
from semsearch.core.types import Document
from semsearch.errors import InputError, SourceError
from tests.conftest import DATA


def _need(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not available")
    return path


def test_medline_real() -> None:
    path = _need("medline")
    assert is_beir_dir(path)
    assert count_corpus(path) == 1033
    it = iter_corpus(path)
    first = next(it)
    assert isinstance(first, Document)
    assert first.id == "1" and first.title == "" and first.text.startswith("correlation between")
    docs = [first, *it]
    assert len(docs) == 1033 == len({d.id for d in docs})
    assert all(d.text for d in docs)
    qrels = load_qrels(path)
    assert len(qrels) == 30 and sum(len(v) for v in qrels.values()) == 696
    assert all(rel > 0 for rels in qrels.values() for rel in rels.values())
    ids = {d.id for d in docs}
    assert all(doc in ids for rels in qrels.values() for doc in rels)
    queries = load_queries(path)
    assert set(queries) == set(qrels)
    assert queries["3"] == "electron microscopy of lung or bronchi."


def test_scifact_split_specific_queries_file() -> None:
    path = _need("scifact")
    stats = json.loads((path / "stats.json").read_text())
    test_q, train_q = load_queries(path, "test"), load_queries(path, "train")
    assert len(test_q) == stats["queries_test"] and len(train_q) == stats["queries_train"]
    assert sum(len(v) for v in load_qrels(path, "train").values()) == stats["qrels_train"]
    with pytest.raises(SourceError, match="available splits: test, train"):
        load_qrels(path, "dev")


# --- synthetic folders ---------------------------------------------------------------------

GOOD_CORPUS = (
    '{"_id": "d1", "title": "T1", "text": "first", "metadata": {"year": 2001}}\n'
    "\n"
    '{"_id": 2, "text": "second"}\n'
)


def _make(tmp: Path, corpus: str | bytes = GOOD_CORPUS,
          queries: str | bytes | None = '{"_id": "q1", "text": "query one"}\n'
                                         '{"_id": "q2", "text": "unjudged"}\n',
          qrels: str | bytes | None = "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t2\t0\n",
          ) -> Path:
    def write(name: str, content: str | bytes) -> None:
        file = tmp / name
        file.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            file.write_bytes(content)
        else:
            file.write_text(content, encoding="utf-8")

    write("corpus.jsonl", corpus)
    if queries is not None:
        write("queries.jsonl", queries)
    if qrels is not None:
        write("qrels/test.tsv", qrels)
    return tmp


def _error(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(SourceError) as info:
        result = call(*args)
        if not isinstance(result, dict | int):
            list(result)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, InputError)
    return message


def test_synthetic_folder_loads(tmp_path: Path) -> None:
    path = _make(tmp_path)
    assert is_beir_dir(path) and not is_beir_dir(tmp_path / "qrels")
    assert count_corpus(path) == 2
    docs = list(iter_corpus(str(path)))
    assert docs == [Document("d1", "first", "T1", {"year": 2001}), Document("2", "second")]
    assert load_qrels(path) == {"q1": {"d1": 2, "2": 0}}
    assert load_queries(path) == {"q1": "query one"}


def test_qrels_without_header_and_space_separated(tmp_path: Path) -> None:
    path = _make(tmp_path, qrels="q1 d1 1\nq1 2 -1\n")
    assert load_qrels(path) == {"q1": {"d1": 1, "2": -1}}


def test_bad_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = _make(tmp_path, corpus=GOOD_CORPUS + '{"_id": "d3", "text": \n')
    it = iter_corpus(path)
    assert next(it).id == "d1"  # streams: earlier documents arrive before the bad line
    message = _error(list, it)
    assert "corpus.jsonl:4: not valid JSON" in message


@pytest.mark.parametrize(("line", "expected"), [
    ('{"title": "x", "text": "y"}', 'corpus.jsonl:2: record has no string "_id"'),
    ('{"_id": "", "text": "y"}', 'corpus.jsonl:2: empty "_id"'),
    ('["_id", "d2"]', "corpus.jsonl:2: expected a JSON object, got list"),
    ('{"_id": "d1", "text": "again"}', "corpus.jsonl:2: duplicate _id 'd1' (first on line 1)"),
    ('{"_id": "d2", "text": 5}', 'corpus.jsonl:2: "text" must be a string, got int'),
    ('{"_id": "d2", "text": "t", "metadata": [1]}', 'corpus.jsonl:2: "metadata" must be'),
])
def test_bad_corpus_records(tmp_path: Path, line: str, expected: str) -> None:
    path = _make(tmp_path, corpus='{"_id": "d1", "text": "ok"}\n' + line + "\n")
    assert expected in _error(iter_corpus, path)


def test_non_utf8_files_are_named(tmp_path: Path) -> None:
    latin1 = '{"_id": "d1", "text": "caf\u00e9"}\n'.encode("latin-1")
    path = _make(tmp_path, corpus=b'{"_id": "d0", "text": "ok"}\n' + latin1)
    message = _error(iter_corpus, path)
    assert "corpus.jsonl:2: not UTF-8 text" in message and "0xe9" in message
    path = _make(tmp_path, queries=b'{"_id": "q1", "text": "\xff"}\n')
    assert "queries.jsonl:1: not UTF-8" in _error(load_queries, path)
    path = _make(tmp_path, queries='{"_id": "q1", "text": "q"}\n', qrels=b"q1\td\xc3\t1\n")
    assert "test.tsv:1: not UTF-8" in _error(load_qrels, path)


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = _make(tmp_path, corpus=b'\xef\xbb\xbf{"_id": "d1", "text": "x"}\n')
    assert [d.id for d in iter_corpus(path)] == ["d1"]


def test_missing_files(tmp_path: Path) -> None:
    assert "corpus.jsonl: missing corpus file" in _error(iter_corpus, tmp_path)
    assert "missing corpus file" in _error(count_corpus, tmp_path)
    assert not is_beir_dir(tmp_path)
    path = _make(tmp_path, queries=None, qrels=None)
    assert "test.tsv: missing qrels file for split 'test'" in _error(load_qrels, path)
    (path / "qrels").mkdir()
    (path / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    assert "queries.jsonl: missing queries file" in _error(load_queries, path)


@pytest.mark.parametrize("content", ["", "\n  \n"])
def test_empty_corpus(tmp_path: Path, content: str) -> None:
    path = _make(tmp_path, corpus=content)
    assert count_corpus(path) == 0
    assert "corpus.jsonl: corpus is empty" in _error(iter_corpus, path)


@pytest.mark.parametrize(("qrels", "expected"), [
    ("query-id\tcorpus-id\tscore\nq1\td1\n", "test.tsv:2: expected 3 fields"),
    ("query-id\tcorpus-id\tscore\nq1\td1\thigh\n", "test.tsv:2: score 'high' is not an integer"),
    ("query-id\tcorpus-id\tscore\n", "test.tsv: no judgments"),
    ("", "test.tsv: no judgments"),
])
def test_bad_qrels(tmp_path: Path, qrels: str, expected: str) -> None:
    assert expected in _error(load_qrels, _make(tmp_path, qrels=qrels))


def test_judged_query_missing_from_queries(tmp_path: Path) -> None:
    path = _make(tmp_path, qrels="q1\td1\t1\nq9\td1\t1\n")
    assert "1 query judged in qrels/test.tsv not found (e.g. 'q9')" in _error(load_queries, path)

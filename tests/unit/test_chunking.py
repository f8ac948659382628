"""semsearch.core.chunking with the real all-MiniLM-L6-v2 WordPiece tokenizer."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as HFTokenizer

import semsearch.errors
from semsearch.core.chunking import (
    ChunkerConfig,
    chunk_document,
    split_paragraphs,
    split_sentences,
)
from semsearch.core.types import Chunk, Document
from semsearch.errors import InputError
from tests.conftest import DATA

TOKENIZER_JSON = Path(semsearch.errors.__file__).parent / "data" / "minilm" / "tokenizer.json"
SCIFACT = DATA / "scifact" / "corpus.jsonl"


class MiniLMTokenizer:
    """Adapter from a ``tokenizers.Tokenizer`` to the ``semsearch.ports.Tokenizer`` protocol."""

    def __init__(self, path: Path = TOKENIZER_JSON) -> None:
        self._tok = HFTokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [(s, e) for s, e in self._tok.encode(text, add_special_tokens=False).offsets]

    def count_tokens(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


@functools.cache
def tok() -> MiniLMTokenizer:
    return MiniLMTokenizer()


# --------------------------------------------------------------------------- generated documents

PLAIN = ["cell", "protein", "expression", "patients", "increased", "analysis", "the", "of", "in",
         "mice", "tumor", "significantly", "receptor", "we", "found", "that", "with", "response",
         "naïve", "résumé", "αβ", "signalling", "immunohistochemistry", "and", "treatment",
         "pneumonoultramicroscopicsilicovolcanoconiosis", "diffusion-weighted", "kinase", "data"]
MIDDLE = ["3.5", "p<0.05", "(MRI)", "e.g. Aspirin", "i.e. DNA", "Fig. 3", "et al. Nature",
          "Dr. Smith", "cells'", "(n = 17)", "vs. Controls", "no. 5", "10%", "IL-6", "中文"]


@dataclass
class GenDoc:
    doc: Document
    sentences: list[tuple[int, int]]


@st.composite
def gen_docs(draw: st.DrawFn) -> GenDoc:
    rnd = draw(st.randoms(use_true_random=False))
    text, sentences = rnd.choice(["", " ", "\n  "]), []
    for p in range(draw(st.integers(1, 4))):
        if p:
            text += rnd.choice(["\n\n", "\n \n", "\n\n\n  "])
        for i in range(draw(st.integers(1, 6))):
            if i:
                text += rnd.choice([" ", "  ", "\n"])
            n_words = draw(st.one_of(st.integers(0, 12), st.integers(30, 120)))
            words = [rnd.choice(PLAIN).capitalize()]
            words += [rnd.choice(PLAIN if rnd.random() < 0.85 else MIDDLE) for _ in range(n_words)]
            words.append(rnd.choice(PLAIN))
            sentence = " ".join(words) + rnd.choice([".", "!", "?", ".)"])
            sentences.append((len(text), len(text) + len(sentence)))
            text += sentence
    text += rnd.choice(["", "\n", " "])
    n_title = draw(st.sampled_from([0, 0, 1, 5, 40]))
    title = " ".join(rnd.choice(PLAIN) for _ in range(n_title))
    return GenDoc(Document(id=rnd.choice(["d1", "doc/7", "x"]), text=text, title=title),
                  sentences)


@st.composite
def configs(draw: st.DrawFn) -> ChunkerConfig:
    max_tokens = draw(st.sampled_from([16, 24, 40, 64, 128, 256]))
    overlap = draw(st.one_of(st.just(0), st.integers(0, max_tokens - 1)))
    return ChunkerConfig(max_tokens, overlap, draw(st.sampled_from(["sentence", "paragraph",
                                                                    "window"])))


def check_invariants(doc: Document, chunks: list[Chunk], config: ChunkerConfig) -> None:
    t = tok()
    assert chunks
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.doc_id == doc.id
        assert t.count_tokens(c.embed_text) + 2 <= config.max_tokens, c
        assert c.text == doc.text[c.start:c.end]
        assert c.text and c.text == c.text.strip()
        base = hashlib.sha256(c.text.encode()).hexdigest()[:12]
        assert re.fullmatch(re.escape(f"{doc.id}#{base}") + r"(-\d+)?", c.id)
        assert doc.title.strip().startswith(c.title)
    assert len({c.id for c in chunks}) == len(chunks)
    # no text lost, chunks in order: non-overlapping parts rebuild every non-space character
    pos, rebuilt = 0, []
    for a, b in pairwise(chunks):
        assert a.start < b.start and a.end < b.end
    for c in chunks:
        rebuilt.append(doc.text[max(pos, c.start):c.end])
        pos = max(pos, c.end)
    assert re.sub(r"\s", "", "".join(rebuilt)) == re.sub(r"\s", "", doc.text)


def shared_tokens(doc: Document, a: Chunk, b: Chunk) -> int:
    return tok().count_tokens(doc.text[b.start:a.end]) if b.start < a.end else 0


# --------------------------------------------------------------------------------- properties

@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(gen_docs(), configs())
def test_chunks_fit_cover_and_respect_sentences(g: GenDoc, config: ChunkerConfig) -> None:
    doc = g.doc
    chunks = chunk_document(doc, tok(), config)
    check_invariants(doc, chunks, config)
    assert [c.id for c in chunk_document(doc, MiniLMTokenizer(), config)] == [c.id for c in chunks]

    title = chunks[0].title
    budget = config.max_tokens - 2 - (tok().count_tokens(title + "\n") if title else 0)
    starts = {s for s, _ in g.sentences}
    ends = {e for _, e in g.sentences}
    oversized = [(s, e) for s, e in g.sentences if tok().count_tokens(doc.text[s:e]) > budget]

    def inside_oversized(i: int) -> bool:
        return any(s < i < e for s, e in oversized)

    for c in chunks:
        assert c.start in starts or inside_oversized(c.start), (c, g.sentences)
        assert c.end in ends or inside_oversized(c.end), (c, g.sentences)
    for a, b in pairwise(chunks):
        if b.start < a.end:  # overlap: whole sentences, within the overlap budget
            assert b.start in starts and a.end in ends
            assert shared_tokens(doc, a, b) <= config.overlap_tokens
    if config.overlap_tokens == 0:
        assert all(b.start >= a.end for a, b in pairwise(chunks))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([*"ab Zé.!?\n\t-3(中\x00\u200b", "word ", "Long. "]),
                max_size=200).map("".join),
       st.text(st.sampled_from(list("Tt ié.\n")), max_size=20), configs())
def test_arbitrary_text_keeps_invariants(text: str, title: str, config: ChunkerConfig) -> None:
    doc = Document(id="f", text=text, title=title)
    if not text.strip() and not title.strip():
        with pytest.raises(InputError):
            chunk_document(doc, tok(), config)
    elif not text.strip():
        assert [c.text for c in chunk_document(doc, tok(), config)] == [title.strip()]
    else:
        check_invariants(doc, chunk_document(doc, tok(), config), config)


@settings(max_examples=150, deadline=None)
@given(gen_docs())
def test_sentence_splitter_finds_generated_sentences(g: GenDoc) -> None:
    got = [s for ps, pe in split_paragraphs(g.doc.text)
           for s in split_sentences(g.doc.text, ps, pe)]
    assert got == g.sentences


# ------------------------------------------------------------------------------- examples

def test_config_validation_and_dict() -> None:
    assert ChunkerConfig().to_dict() == {"max_tokens": 256, "overlap_tokens": 32,
                                         "strategy": "sentence", "version": 1}
    cfg = ChunkerConfig(64, 8, "window")
    assert ChunkerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match="15"):
        ChunkerConfig(max_tokens=15)
    with pytest.raises(InputError, match="64"):
        ChunkerConfig(max_tokens=64, overlap_tokens=64)
    with pytest.raises(InputError, match="-1"):
        ChunkerConfig(overlap_tokens=-1)
    with pytest.raises(InputError, match="'tokens'"):
        ChunkerConfig(strategy="tokens")
    with pytest.raises(InputError):
        ChunkerConfig(max_tokens=True)  # type: ignore[arg-type]


def test_short_document_is_one_stripped_chunk() -> None:
    doc = Document(id="a", text="  \nA short abstract. It has two sentences.\n", title="Title")
    (c,) = chunk_document(doc, tok(), ChunkerConfig())
    assert c.text == "A short abstract. It has two sentences."
    assert (c.start, c.end, c.title, c.ordinal) == (3, 42, "Title", 0)
    assert c.embed_text == "Title\nA short abstract. It has two sentences."
    assert c.id == "a#" + hashlib.sha256(c.text.encode()).hexdigest()[:12]


def test_title_only_and_empty_documents() -> None:
    (c,) = chunk_document(Document(id="t", text=" \n ", title=" Only a title "), tok(),
                          ChunkerConfig())
    assert (c.text, c.start, c.end, c.title, c.embed_text) == (
        "Only a title", 0, 0, "", "Only a title")
    with pytest.raises(InputError, match="'empty-doc'"):
        chunk_document(Document(id="empty-doc", text="  ", title=" "), tok(), ChunkerConfig())


def test_long_title_is_truncated_to_half_the_budget() -> None:
    title = " ".join(["immunohistochemistry"] * 60)
    doc = Document(id="t", text="One sentence here. " * 30, title=title)
    config = ChunkerConfig(max_tokens=64, overlap_tokens=0)
    chunks = chunk_document(doc, tok(), config)
    check_invariants(doc, chunks, config)
    assert 0 < tok().count_tokens(chunks[0].title) <= (64 - 2) // 2
    assert all(c.title == chunks[0].title for c in chunks)
    assert title.startswith(chunks[0].title) and not chunks[0].title.endswith(" ")


def test_duplicate_text_gets_suffixed_ids() -> None:
    para = "Alpha beta gamma delta epsilon zeta eta theta iota kappa."
    other = "Something else entirely different is written here in this middle paragraph today."
    doc = Document(id="dup", text=f"{para}\n\n{other}\n\n{para}")
    config = ChunkerConfig(max_tokens=24, overlap_tokens=0, strategy="paragraph")
    chunks = chunk_document(doc, tok(), config)
    check_invariants(doc, chunks, config)
    assert [c.text for c in chunks] == [para, other, para]
    base = "dup#" + hashlib.sha256(para.encode()).hexdigest()[:12]
    assert (chunks[0].id, chunks[2].id) == (base, base + "-2")


def test_sentence_splitter_abbreviations_decimals_and_lines() -> None:
    text = ("Shown in Fig. 2 and e.g. Aspirin helped (Smith et al. Nature). Dr. Jones measured "
            "3.5 mg. No. 5 was lost! Why? \"Quoted\" start.\nlower line after newline\n"
            "- bullet one\n- bullet two")
    got = [text[s:e] for s, e in split_sentences(text)]
    assert got == [
        "Shown in Fig. 2 and e.g. Aspirin helped (Smith et al. Nature).",
        "Dr. Jones measured 3.5 mg.", "No. 5 was lost!", "Why?", "\"Quoted\" start.",
        "lower line after newline", "- bullet one", "- bullet two",
    ]
    other = "see the No. 5 result. Next"
    assert [other[s:e] for s, e in split_sentences(other)] == ["see the No. 5 result.", "Next"]


def test_oversized_sentence_splits_at_whitespace() -> None:
    text = " ".join(["signalling receptor kinase"] * 60) + ". Short tail sentence here."
    doc = Document(id="long", text=text)
    config = ChunkerConfig(max_tokens=32, overlap_tokens=20)
    chunks = chunk_document(doc, tok(), config)
    check_invariants(doc, chunks, config)
    assert len(chunks) > 5 and chunks[-1].text.endswith("Short tail sentence here.")
    for a, b in pairwise(chunks):  # fragments are never carried as overlap
        assert a.end <= b.start and text[a.end].isspace()


def test_unbreakable_word_is_cut_at_token_boundaries_within_budget() -> None:
    word = "pneumonoultramicroscopicsilicovolcanoconiosis" * 2  # < 100 chars: no [UNK]
    doc = Document(id="w", text=f"Intro sentence. {word} is long. End.", title="Title")
    config = ChunkerConfig(max_tokens=16, overlap_tokens=4)
    chunks = chunk_document(doc, tok(), config)
    check_invariants(doc, chunks, config)
    assert len(chunks) >= 3
    # a piece cut mid-word re-tokenizes to more tokens than its spans ("electro|encephalo...")
    text = ("immunohistochemistryelectroencephalographyelectroencephalographyimmunohistochemistry"
            " cells. End here now.")
    doc = Document(id="w2", text=text)
    config = ChunkerConfig(max_tokens=18, overlap_tokens=0)
    check_invariants(doc, chunk_document(doc, tok(), config), config)


def test_overlap_carries_whole_trailing_sentences() -> None:
    sentences = [f"Sentence number {w} talks about proteins." for w in
                 ["one", "two", "three", "four", "five", "six", "seven", "eight"]]
    doc = Document(id="o", text=" ".join(sentences))
    n = tok().count_tokens(sentences[0])
    config = ChunkerConfig(max_tokens=3 * n + 2, overlap_tokens=n)
    chunks = chunk_document(doc, tok(), config)
    check_invariants(doc, chunks, config)
    assert [c.text for c in chunks[:2]] == [" ".join(sentences[0:3]), " ".join(sentences[2:5])]
    no_overlap = chunk_document(doc, tok(), ChunkerConfig(3 * n + 2, 0))
    assert [c.text for c in no_overlap[:2]] == [" ".join(sentences[0:3]),
                                                 " ".join(sentences[3:6])]


def test_strategies_differ_on_paragraphs() -> None:
    p1 = "First paragraph opens here. It continues with detail."
    p2 = "Second paragraph is short."
    p3 = "Third paragraph starts now. It has another sentence."
    doc = Document(id="p", text=f"{p1}\n\n{p2}\n\n{p3}")
    n = tok().count_tokens
    budget = n(p1) + n(p2) + 2
    para = chunk_document(doc, tok(), ChunkerConfig(budget, 0, "paragraph"))
    assert [c.text for c in para] == [f"{p1}\n\n{p2}", p3]
    sent = chunk_document(doc, tok(), ChunkerConfig(budget, n(p2), "sentence"))
    wind = chunk_document(doc, tok(), ChunkerConfig(budget, n(p2), "window"))
    assert [c.text for c in sent] == [f"{p1}\n\n{p2}", p3]  # no overlap across paragraphs
    assert [c.text for c in wind] == [f"{p1}\n\n{p2}", f"{p2}\n\n{p3}"]  # window keeps it
    for chunks, strategy in [(para, "paragraph"), (sent, "sentence"), (wind, "window")]:
        check_invariants(doc, chunks, ChunkerConfig(budget, n(p2), strategy))


def load_scifact(limit: int | None) -> list[Document]:
    if not SCIFACT.exists():
        pytest.skip("SciFact corpus not available")
    docs = []
    with SCIFACT.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            docs.append(Document(id=row["_id"], text=row["text"], title=row["title"]))
            if limit is not None and len(docs) >= limit:
                break
    return docs


@pytest.mark.parametrize("config", [ChunkerConfig(), ChunkerConfig(128, 32, "window")])
def test_scifact_documents_chunk_within_budget(config: ChunkerConfig) -> None:
    for doc in load_scifact(300):
        check_invariants(doc, chunk_document(doc, tok(), config), config)


@pytest.mark.slow
def test_whole_scifact_corpus_chunks() -> None:
    config = ChunkerConfig()
    for doc in load_scifact(None):
        if doc.text.strip() or doc.title.strip():
            check_invariants(doc, chunk_document(doc, tok(), config), config)

"""Similar documents on the real model and a real index: near-copies first, the document
itself left out, filters, unknown ids, and the shared document-vector helpers."""

from __future__ import annotations

import numpy as np
import pytest

from semsearch.core.filters import parse_filter
from semsearch.errors import InputError, NotFoundError
from semsearch.runtime.engine import Engine
from semsearch.runtime.indexes import doc_vector
from semsearch.services.doc_vectors import chunk_vectors, document_vectors
from semsearch.services.ingest import delete_documents, index_documents
from semsearch.services.neighbours import similar
from tests.services.relevance_corpus import DOCS


@pytest.fixture
def indexed(engine: Engine) -> Engine:
    index_documents(engine, "c", DOCS)
    return engine


def _ids(engine: Engine, doc_id: str, **kw: object) -> list[str]:
    return [h.doc_id for h in similar(engine, "c", doc_id, **kw).hits]  # type: ignore[arg-type]


def test_near_copies_come_first_and_the_document_is_left_out(indexed: Engine) -> None:
    result = similar(indexed, "c", "starter", k=4)
    ids = [h.doc_id for h in result.hits]
    assert "starter" not in ids
    assert set(ids[:2]) == {"starter-copy", "starter-each"}
    assert ids[2] == "flour"  # the related document next, before other topics
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits),
                                                    reverse=True)
    assert [h.components["dense"].rank for h in result.hits] == [1, 2, 3, 4]
    assert result.version == "c"
    assert set(_ids(indexed, "engine", k=2)) == {"tyres", "brakes"}


def test_a_document_of_several_chunks_is_one_hit(indexed: Engine) -> None:
    ids = _ids(indexed, "news", k=11)
    assert ids[0] == "news-edit"
    assert len(ids) == len(set(ids)) == 11  # every other document once, itself never


def test_filters_restrict_the_answers(indexed: Engine) -> None:
    ids = _ids(indexed, "starter", k=10, filt=parse_filter({"topic": "cars"}))
    assert set(ids) == {"engine", "tyres", "brakes"}
    assert _ids(indexed, "starter", filt=parse_filter({"topic": "none"})) == []


def test_unknown_and_deleted_documents_are_not_found(indexed: Engine) -> None:
    with pytest.raises(NotFoundError, match="'missing'"):
        similar(indexed, "c", "missing")
    delete_documents(indexed, "c", ["starter-copy"])
    assert "starter-copy" not in _ids(indexed, "starter")
    with pytest.raises(NotFoundError):
        similar(indexed, "c", "starter-copy")
    with pytest.raises(NotFoundError):
        similar(indexed, "nope", "starter")


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_bad_k_is_refused(indexed: Engine, k: int) -> None:
    with pytest.raises(InputError, match="k must be"):
        similar(indexed, "c", "starter", k=k)


def test_document_vectors_are_the_mean_of_the_cached_chunk_vectors(indexed: Engine) -> None:
    handle = indexed.collection("c")
    got = document_vectors(indexed, handle, ["news", "starter", "missing"])
    assert set(got) == {"news", "starter"}
    chunks = [sc for batch in indexed.store.iter_chunks("c") for sc in batch
              if sc.chunk.doc_id == "news"]
    assert len(chunks) > 1
    vecs = chunk_vectors(indexed, handle, sorted(chunks, key=lambda s: s.chunk.ordinal))
    assert vecs.shape == (len(chunks), 384)
    np.testing.assert_allclose(got["news"], doc_vector(vecs), atol=1e-5)
    assert float(np.linalg.norm(got["starter"])) == pytest.approx(1.0, abs=1e-5)
    assert chunk_vectors(indexed, handle, []).shape == (0, 384)

"""Schema-driven fuzzing of every operation in the live server's ``/openapi.json``: whatever
schemathesis sends, valid or not, the answer is never a 5xx.

A collection "docs" holding the sample corpus exists first. In the fuzzing phase, generated
collection names are often swapped for "docs" (and OpenAI model ids for a served one) so
search, get, upsert, /v1/embeddings and /v1/models/{id} reach real data, not only 404s;
"docs" is never the target of a collection drop, so it survives the run. The coverage phase
(schema boundary cases) runs unmodified."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.api.conftest import LiveServer

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

REAL = "docs"
MODELS = ("sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2")


def _seed(live: LiveServer) -> None:
    from semsearch.adapters.sources.files import iter_documents
    from semsearch.services.quickstart import sample_dir

    with live.client() as c:
        if c.get(f"/collections/{REAL}/documents/compost.md").status_code == 200:
            return
        assert c.post("/collections", json={"name": REAL}).status_code == 201
        docs = [{"id": d.id, "text": d.text, "title": d.title, "metadata": dict(d.metadata)}
                for d in iter_documents(sample_dir())]
        r = c.post(f"/collections/{REAL}/documents", json={"documents": docs})
        assert r.status_code == 200, r.text


def _is_drop(context: Any) -> bool:
    op = context.operation
    return op is not None and op.method.upper() == "DELETE" and op.path == "/collections/{name}"


@pytest.fixture(scope="module")
def api_schema(live: LiveServer) -> Any:
    _seed(live)
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")

    @schema.hook("flatmap_query")
    def real_collection_in_query(context: Any, query: Any) -> Any:
        if isinstance(query, dict) and "collection" in query:
            return st.sampled_from([query, {**query, "collection": REAL}])
        return st.just(query)

    @schema.hook("flatmap_body")
    def real_names_in_body(context: Any, body: Any) -> Any:
        if isinstance(body, dict) and "collection" in body:
            return st.sampled_from([body, {**body, "collection": REAL}])
        if isinstance(body, dict) and isinstance(body.get("model"), str):
            return st.sampled_from([body, *({**body, "model": m} for m in MODELS)])
        return st.just(body)

    @schema.hook("flatmap_path_parameters")
    def real_collection_in_path(context: Any, params: Any) -> Any:
        if isinstance(params, dict) and "name" in params and not _is_drop(context):
            return st.sampled_from([params, {**params, "name": REAL}])
        if isinstance(params, dict) and "model_id" in params:
            return st.sampled_from([params, *({**params, "model_id": m} for m in MODELS)])
        return st.just(params)

    @schema.hook("filter_path_parameters")
    def never_drop_the_real_collection(context: Any, params: Any) -> bool:
        return not (_is_drop(context) and isinstance(params, dict)
                    and params.get("name") == REAL)

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_no_operation_answers_5xx(case: Any) -> None:
    case.call_and_validate(checks=[not_a_server_error], timeout=60)


def test_the_real_collection_survived(live: LiveServer, api_schema: Any) -> None:
    with live.client() as c:
        r = c.get("/search", params={"q": "sourdough starter feeding", "collection": REAL,
                                     "k": 3})
    assert r.status_code == 200, r.text
    assert r.json()["hits"], "the seeded collection should still answer searches"

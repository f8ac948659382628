"""``semsearch adapt --method finetune``: a full fine-tune of the local all-MiniLM-L6-v2
(torch, the ``sentence-transformers`` extra) becomes a new stamped identity whose weights
live in the store; the re-index re-embeds under it, the gate judges it, the swap serves it,
a fresh process serves it from the stored weights with onnxruntime alone (torch never
imported), and rollback restores the base model."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from semsearch.config import Settings
from semsearch.core.adapter import FinetuneConfig, split_finetuned
from semsearch.core.types import InputType, Mode
from semsearch.runtime.engine import Engine
from semsearch.services.adapt import adapt
from semsearch.services.ingest import index_documents
from semsearch.services.search import SearchRequest, search
from semsearch.services.versions import rollback
from semsearch.wiring import make_finetuner
from tests.services.adapt_data import TOPICS, acronym, documents, write_beir

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("torch") is None
    or importlib.util.find_spec("sentence_transformers") is None,
    reason="torch and sentence-transformers are not installed (pip install torch==2.13.0 "
           "sentence-transformers): the fine-tune path is unavailable")

FEW_STEPS = FinetuneConfig(epochs=2, max_steps=3, batch_size=16)
QUERIES = [f"what about {acronym(t)} today" for t in range(0, TOPICS, 4)]

SERVE = """
import json, sys
from semsearch.core.types import Mode
from semsearch.services.search import SearchRequest, search
from semsearch.wiring import open_engine
engine = open_engine()
try:
    hits = {q: [h.doc_id for h in search(engine, "acr", SearchRequest(q, mode=Mode.DENSE,
            k=3)).hits] for q in json.loads(sys.argv[1])}
    print(json.dumps({"hits": hits, "identity": engine.collection("acr").info.identity.key(),
                      "torch": "torch" in sys.modules}))
finally:
    engine.close()
"""


def _top(engine: Engine, query: str) -> list[str]:
    return [h.doc_id for h in
            search(engine, "acr", SearchRequest(query, mode=Mode.DENSE, k=3)).hits]


# ~30 s (a real fine-tune, an ONNX build and a second process), kept in the default run:
# it is the only check of the fine-tune path, and CI installs torch for it.
@pytest.mark.model
def test_finetune_reindexes_gates_swaps_serves_without_torch_and_rolls_back(
        engine: Engine, settings: Settings, tmp_path: Path) -> None:
    data = write_beir(tmp_path)
    index_documents(engine, "acr", documents())
    index_documents(engine, "other", documents())
    base_identity = engine.collection("acr").info.identity
    base_vectors = engine.collection("acr").embedder.embed(QUERIES, InputType.QUERY)
    steps: list[tuple[int, int]] = []

    report = adapt(engine, "acr", data, method="finetune", finetuner=make_finetuner(),
                   finetune_config=FEW_STEPS, tolerance=1.0,
                   on_train_step=lambda done, total: steps.append((done, total)))

    assert steps and steps[-1] == (3, 3)
    assert report.method == "finetune" and report.train.steps == 3
    assert report.train.holdout_queries > 0 and report.train.excluded == 0
    rep = report.reindex
    assert rep is not None and rep.swapped and rep.gate is not None
    info = engine.collection("acr").info
    assert info.identity != base_identity
    assert split_finetuned(info.identity) == (base_identity, report.fingerprint)
    assert engine.store.get_artifact(f"finetuned-model/{report.fingerprint}") is not None
    tuned = engine.collection("acr").embedder
    # Its own vectors, under its own cache keys: the corpus was re-embedded, not reused.
    vectors = tuned.embed(QUERIES, InputType.QUERY)
    assert not np.allclose(vectors, base_vectors, atol=1e-3)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert tuned.cache_key(InputType.PASSAGE, "x") != \
        engine.collection("other").embedder.cache_key(InputType.PASSAGE, "x")
    mine = {q: _top(engine, q) for q in QUERIES}

    # A fresh process with an empty model cache builds the model from the stored weights
    # and serves the same answers, with onnxruntime alone.
    env = {**os.environ, "SEMSEARCH_HOME": str(settings.home),
           "SEMSEARCH_MODEL_CACHE_DIR": str(tmp_path / "fresh-models")}
    done = subprocess.run([sys.executable, "-c", SERVE, json.dumps(QUERIES)], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    served = json.loads(done.stdout.strip().splitlines()[-1])
    assert served["identity"] == info.identity.key()
    assert served["torch"] is False
    assert served["hits"] == mine
    assert any((tmp_path / "fresh-models").glob(f"finetuned-{report.fingerprint}*"))

    # "other" is untouched; rollback restores the base model on "acr".
    assert engine.collection("other").info.identity == base_identity
    back = rollback(engine, "acr")
    assert back["active"] == "acr"
    assert engine.collection("acr").info.identity == base_identity
    assert np.allclose(engine.collection("acr").embedder.embed(QUERIES, InputType.QUERY),
                       base_vectors)


def test_finetune_of_a_model_other_than_the_local_default_is_refused(
        monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path) -> None:
    from semsearch.errors import InputError
    from semsearch.wiring import open_engine

    monkeypatch.setenv("SEMSEARCH_EMBEDDER", "fake")
    engine = open_engine(Settings())
    try:
        index_documents(engine, "acr", documents())
        with pytest.raises(InputError, match="fine-tunes the local"):
            adapt(engine, "acr", write_beir(tmp_path), method="finetune",
                  finetuner=make_finetuner())
        with pytest.raises(InputError, match="needs a fine-tuner"):
            adapt(engine, "acr", write_beir(tmp_path / "b"), method="finetune")
        assert [c.name for c in engine.store.list_collections()] == ["acr"]
    finally:
        engine.close()

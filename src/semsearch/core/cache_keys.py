"""Cache keys. A key that forgets any part of the model identity serves wrong vectors
silently, so every part of it goes in: provider, model, revision, dimension, normalization,
metric, input type, and the text's sha256."""

from __future__ import annotations

import hashlib

from semsearch.core.types import EmbedderIdentity, InputType


def cache_key(identity: EmbedderIdentity, input_type: InputType, text: str) -> str:
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    scope = hashlib.sha256(f"{identity.key()}|{input_type.value}".encode()).hexdigest()[:16]
    return f"{scope}:{text_hash}"

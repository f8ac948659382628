"""Serving a collection stamped with an adapted identity (``semsearch adapt``).

The adapted embedder is the base model's, seen through the adapter: passages are the base
model's vectors, cached under the **base** identity (a re-index to the adapted identity
reads every passage from the cache and the model never runs over the corpus); queries are
the base model's vectors, cached under the base identity too, with ``W`` applied after the
cache (a matrix-vector product: cheaper than a cache round trip). No vector is ever cached
under the adapted identity, so no adapted vector can be served for the base identity nor a
stale adapter's for another: the identity a vector is keyed by is always the one that made
it. The adapter's weights come from the canonical store (``ArtifactStore``), so every
process and replica serving the collection finds them."""

from __future__ import annotations

from collections.abc import Sequence

from semsearch.core.adapter import LinearAdapter, artifact_key, fingerprint, split_adapted
from semsearch.core.cache_keys import cache_key
from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import IdentityMismatchError, NotFoundError
from semsearch.ports import ArtifactStore, Embedder, Tokenizer, Vectors
from semsearch.runtime.embedding import CachedEmbedder, EmbedStats


class AdaptedEmbedder:
    """``Embedder`` of an adapted identity: the base model, with ``W`` on query vectors."""

    def __init__(self, base: Embedder, adapter: LinearAdapter,
                 identity: EmbedderIdentity) -> None:
        self.base = base
        self.adapter = adapter
        self._identity = identity
        self.meter: ProviderMeter = base.meter  # calls are the base model's

    @property
    def identity(self) -> EmbedderIdentity:
        return self._identity

    @property
    def tokenizer(self) -> Tokenizer:
        return self.base.tokenizer

    def embed(self, texts: Sequence[str], input_type: InputType) -> Vectors:
        vectors = self.base.embed(texts, input_type)
        return self.adapter.apply(vectors) if input_type == InputType.QUERY else vectors


class AdaptedCachedEmbedder(CachedEmbedder):
    """The cached embedder of an adapted identity (see the module doc): every lookup goes
    through ``base`` (the base identity's cached embedder, with its cache and pricing)."""

    def __init__(self, base: CachedEmbedder, adapter: LinearAdapter,
                 identity: EmbedderIdentity) -> None:
        super().__init__(AdaptedEmbedder(base.embedder, adapter, identity), base.cache,
                         price_per_mtok=base.price_per_mtok)
        self.base = base
        self.adapter = adapter

    def embed(self, texts: Sequence[str], input_type: InputType,
              stats: EmbedStats | None = None) -> Vectors:
        vectors = self.base.embed(texts, input_type, stats)
        return self.adapter.apply(vectors) if input_type == InputType.QUERY else vectors

    def cache_key(self, input_type: InputType, text: str) -> str:
        """The key a text's vector is cached under: the base identity's (see the module
        doc)."""
        return cache_key(self.base.identity, input_type, text)


def load_adapter(artifacts: ArtifactStore, identity: EmbedderIdentity) -> LinearAdapter:
    """The adapter an adapted identity names, from the store, checked against the
    fingerprint and the base model it was trained on."""
    split = split_adapted(identity)
    if split is None:
        raise IdentityMismatchError(f"{identity.key()} is not an adapted identity")
    base, fp = split
    data = artifacts.get_artifact(artifact_key(fp))
    if data is None:
        raise NotFoundError(
            f"the query adapter {fp} of {identity.key()} is not in the store (was the store "
            "restored without it?); roll the collection back (semsearch rollback) or adapt "
            "it again (semsearch adapt)")
    if fingerprint(data) != fp:
        raise IdentityMismatchError(f"the stored query adapter {fp} does not match its "
                                    "fingerprint; adapt the collection again")
    adapter = LinearAdapter.from_bytes(data)
    if adapter.base != base.key() or adapter.dimension != identity.dimension:
        raise IdentityMismatchError(
            f"query adapter {fp} was trained for {adapter.base} (dimension "
            f"{adapter.dimension}), not {base.key()}")
    return adapter

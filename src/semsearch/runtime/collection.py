"""The collection handle: one resolved version of a collection, with what serving it takes.

A handle is made by ``Engine.collection(name)``, which resolves the name (an alias) to the
version it points at once, reads that version's info once and picks its embedder once;
every use case (search, write, evaluate, re-index, the API) then works on the handle
instead of repeating resolve -> get_collection -> embedder_for -> fresh_indexes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from semsearch.core.chunking import ChunkerConfig
from semsearch.ports import CollectionInfo
from semsearch.runtime.embedding import CachedEmbedder
from semsearch.runtime.indexes import CollectionIndexes

if TYPE_CHECKING:
    from semsearch.runtime.engine import Engine


@dataclass
class Collection:
    engine: Engine
    name: str  # as the caller gave it: the name runs are recorded under
    info: CollectionInfo  # of the version ``name`` points at, as read when opened
    created: bool = False  # this handle's opening created the collection
    _embedder: CachedEmbedder | None = field(default=None, repr=False)

    @property
    def embedder(self) -> CachedEmbedder:
        """The embedder of the version's stamped identity, picked on first use (listing or
        compacting a collection needs none); IdentityMismatchError if none can serve it."""
        if self._embedder is None:
            self._embedder = self.engine.embedder_for(self.info)
        return self._embedder

    @property
    def version(self) -> str:
        """The stored name of the version this handle serves (``docs``, ``docs@v2``)."""
        return self.info.name

    @property
    def chunker(self) -> ChunkerConfig:
        return ChunkerConfig.from_dict(dict(self.info.chunker))

    def indexes(self) -> CollectionIndexes:
        """The version's derived indexes, caught up with the store as of this handle."""
        return self.engine.fresh_indexes(self.info)

    def reload(self) -> CollectionInfo:
        """Re-read the version's info (counts, generation) after writes."""
        self.info = self.engine.store.get_collection(self.version)
        return self.info

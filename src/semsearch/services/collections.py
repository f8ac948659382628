"""Collections as users see them: a name, its active version, the versions kept beside it,
their sizes and their garbage; removal and compaction.

A name either is a collection or is an alias pointing at one of its versions (``name@vN``,
made by ``reindex``); the name itself stays valid as version 1 of an alias of the same name.
Nothing here touches another collection's files."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from semsearch.errors import AlreadyExistsError, InputError, NotFoundError
from semsearch.ports import CollectionInfo
from semsearch.runtime.engine import Engine
from semsearch.runtime.naming import base_version, version_of


def versions(engine: Engine, name: str) -> list[CollectionInfo]:
    """Every stored version of a collection name, oldest first."""
    return _by_name(engine.store.list_collections()).get(name, [])


def _by_name(infos: list[CollectionInfo]) -> dict[str, list[CollectionInfo]]:
    out: dict[str, list[CollectionInfo]] = {}
    for info in sorted(infos, key=lambda i: version_of(i.name)[1]):
        out.setdefault(version_of(info.name)[0], []).append(info)
    return out


@dataclass
class VersionSummary:
    """One stored version of a collection, as listings show it."""

    name: str
    version: int
    active: bool
    model: str
    identity: dict[str, Any]
    chunker: dict[str, Any]
    documents: int
    chunks: int
    vectors_live: int | None  # None: the index is not in memory and listing never loads it
    vectors_deleted: int | None
    generation: int
    created_at: str
    bytes_on_disk: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CollectionSummary:
    """A collection name: its active version's figures, and every version kept."""

    name: str
    active: str  # the version it serves
    active_version: int
    current: VersionSummary
    previous: list[str]
    versions: list[VersionSummary]

    @property
    def identity(self) -> dict[str, Any]:
        return self.current.identity

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``collections --json`` and ``GET /collections``."""
        row = self.current.to_dict()
        del row["version"]
        row.update({
            "name": self.name, "active_version": self.active_version, "active": self.active,
            "dimension": self.current.identity["dimension"],
            "metric": self.current.identity["metric"], "previous": list(self.previous),
            "versions": [v.to_dict() for v in self.versions]})
        return row


def _version_row(engine: Engine, info: CollectionInfo, active: str) -> VersionSummary:
    # Counting needs the index in memory: the active version's is (it serves); a kept
    # version's is only read if this process already holds it.
    vectors_deleted: int | None = None
    vector_entries: int | None = None
    if engine.has_indexes(info.name) or (
            info.name == active and engine.index_storage.exists(info.name)):
        idx = engine.indexes(info)  # as saved: listing never rebuilds or embeds
        vectors_deleted = idx.vectors.deleted
        vector_entries = len(idx.vectors)
    return VersionSummary(
        name=info.name, version=version_of(info.name)[1], active=info.name == active,
        model=info.identity.model, identity=info.identity.to_dict(),
        chunker=dict(info.chunker), documents=info.documents, chunks=info.chunks,
        vectors_live=vector_entries, vectors_deleted=vectors_deleted,
        generation=info.generation, created_at=info.created_at,
        bytes_on_disk=engine.index_storage.disk_bytes(info.name))


def describe_collections(engine: Engine) -> list[CollectionSummary]:
    """One summary per collection name, describing its active version, with all versions."""
    aliases = engine.store.list_aliases()
    grouped = _by_name(engine.store.list_collections())  # one read for every name
    rows: list[CollectionSummary] = []
    for name in sorted(set(grouped) | set(aliases)):
        active = aliases[name][0] if name in aliases else name
        infos = grouped.get(name, [])
        by_name = {i.name: i for i in infos}
        if active not in by_name:
            continue  # versions only (a shadow being built for a name not yet aliased)
        current = _version_row(engine, by_name[active], active)
        rows.append(CollectionSummary(
            name=name, active=active, active_version=current.version, current=current,
            previous=list(aliases[name][1]) if name in aliases else [],
            versions=[_version_row(engine, i, active) for i in infos]))
    return rows


def create_collection(engine: Engine, name: str) -> CollectionInfo:
    """A new, empty collection stamped with the configured embedder and chunker."""
    try:
        engine.collection(name)
    except NotFoundError:
        return engine.collection(name, create=True).info
    raise AlreadyExistsError(f"collection {name!r} already exists")


def document_count(engine: Engine, name: str) -> int:
    """Documents in the version ``name`` points at (a progress total)."""
    return engine.collection(name).info.documents


def get_document(engine: Engine, name: str, doc_id: str) -> dict[str, Any]:
    """One stored document of the version ``name`` points at: id, title, text, metadata
    and content hash."""
    return engine.store.get_document(engine.collection(name).version, doc_id)


def physical_name(name: str) -> str:
    """``docs@v1`` is the collection created under the plain name ``docs``."""
    return base_version(name)


def drop_collection(engine: Engine, name: str) -> list[str]:
    """Drop a collection name with all its versions, or one version (``name@vN``) that is
    not the active one. Returns what was dropped."""
    base, _ = version_of(name)
    if name != base:  # one version
        physical = physical_name(name)
        alias = engine.store.get_alias(base)
        target, history = alias if alias else (base, [])
        if physical == target:
            raise InputError(f"{name!r} is the active version of {base!r}; roll back or "
                             f"activate another version first, or drop {base!r} entirely")
        _drop_physical(engine, physical)
        if alias is not None:
            engine.store.set_alias(base, target, target,
                                   [h for h in history if h != physical],
                                   carry_sync_state=False)
        return [physical]
    infos = versions(engine, name)
    if not infos:
        engine.store.get_collection(name)  # unknown name -> NotFoundError
    for info in infos:
        _drop_physical(engine, info.name)
    engine.store.drop_alias(name)
    engine.index_storage.unpoint(name)
    from semsearch.services.tune import retire_defaults  # tune imports search, this not

    retire_defaults(engine, name)
    return [i.name for i in infos]


def _drop_physical(engine: Engine, physical: str) -> None:
    engine.store.get_collection(physical)  # unknown -> NotFoundError before touching files
    engine.forget_indexes(physical)
    engine.store.drop_collection(physical)
    engine.drop_indexes(physical)


@dataclass
class CompactReport:
    collection: str
    version: str
    vectors_deleted_before: int
    vectors_deleted_after: int
    bytes_before: dict[str, int]
    bytes_after: dict[str, int]
    bytes_freed: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compact_collection(engine: Engine, name: str, store: bool = True) -> CompactReport:
    """Reclaim the space deleted documents still hold: tombstoned vector slots, deleted
    keyword postings, and (``store``) free pages of the canonical store, which is shared by
    every collection. Results are the same before and after."""
    started = time.perf_counter()
    handle = engine.collection(name)
    physical = handle.version
    idx = handle.indexes()

    def sizes() -> dict[str, int]:
        out = {"vectors": idx.vectors.disk_bytes(), "keyword": idx.keyword.disk_bytes()}
        if store:
            out["store"] = engine.store.disk_usage()["bytes"]
        return out

    with idx.rw.write():
        info = engine.store.get_collection(physical)
        if not idx.is_saved(info.generation):
            idx.save(info.generation)
        before, deleted_before = sizes(), idx.vectors.deleted
        with idx.lock:
            idx.vectors.compact()
            idx.keyword.compact()
        if store:
            engine.store.vacuum()
        after = sizes()
    return CompactReport(
        collection=name, version=physical, vectors_deleted_before=deleted_before,
        vectors_deleted_after=idx.vectors.deleted, bytes_before=before, bytes_after=after,
        bytes_freed=sum(before.values()) - sum(after.values()),
        seconds=round(time.perf_counter() - started, 3))

"""Contract suites: one per port, parametrized over factories, one per backend.

Each module lists its backends as factories (in the style of qdrant-client's congruence
tests); a new backend (PostgreSQL, pgvector, Milvus) joins by adding a factory to that list,
and passes when every case of the suite passes for it."""

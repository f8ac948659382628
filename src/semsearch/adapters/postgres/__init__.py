"""PostgreSQL (with pgvector) as the shared backend: the canonical store, the derived
indexes, the locks and the API keys of every semsearch process pointed at one database
(``SEMSEARCH_STORE=postgresql://...``). Opt-in: nothing here is imported on the default
path."""

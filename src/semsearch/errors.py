"""Every error semsearch raises on purpose.

The hierarchy lets callers catch one family while the CLI and API turn any of them into a
one-line message (and, later, a stable error code) without a stack trace::

    SemsearchError
    ├── InputError            bad user input: empty text, malformed corpus line, bad filter
    │   └── SourceError       a corpus or source that cannot be read
    ├── NotFoundError         unknown collection, document or model
    ├── AlreadyExistsError    creating a collection that exists
    ├── IdentityMismatchError collection built with another embedder (model, dimension, ...)
    ├── BackendError          a backend failed (model file, database, index)
    │   ├── StorageFullError  a write found the disk full (the path and cause are named)
    │   ├── IndexMissingError a derived index is gone (a wiped Milvus); names the rebuild
    │   └── BrokerUnavailableError a message broker cannot be reached or dropped the link
    ├── BusyError             another run holds the collection (sync lock)
    └── StaleWriteError       a change event lost a race to a newer version of its id
"""

from __future__ import annotations


class SemsearchError(Exception):
    """Base class; ``code`` is a stable machine-readable name for the failure."""

    code = "semsearch_error"


class InputError(SemsearchError, ValueError):
    code = "invalid_input"


class SourceError(InputError):
    code = "invalid_source"


class NotFoundError(SemsearchError, LookupError):
    code = "not_found"


class AlreadyExistsError(SemsearchError):
    code = "collection_exists"


class IdentityMismatchError(SemsearchError):
    code = "identity_mismatch"


class BackendError(SemsearchError, RuntimeError):
    code = "backend_error"


class StorageFullError(BackendError):
    """No space left where a file must be written. Reads keep working; the message names
    the file and the cause, and the write can simply be retried once space is freed."""

    code = "storage_full"


class ContextOverflowError(InputError):
    """A question and the room kept for the answer do not fit the LLM's context window, or
    the LLM server refused the prompt as too long: the message names the setting to change."""

    code = "context_overflow"


class IndexMissingError(BackendError):
    """A derived index that should hold a collection's data is gone (a wiped Milvus): the
    message names the command that rebuilds it from the canonical store."""

    code = "index_missing"


class BusyError(SemsearchError):
    code = "busy"


class BrokerUnavailableError(BackendError):
    """A message broker refused the connection or dropped it. A consumer retries with
    backoff; nothing is lost, since unacknowledged messages are delivered again."""

    code = "broker_unavailable"


class StaleWriteError(SemsearchError):
    """A batch of change events carried a version that another writer already applied (or
    passed) for one of its ids. The store rolled the batch back; the consumer re-reads the
    versions and writes what is still newer."""

    code = "stale_write"

    def __init__(self, ids: list[str]) -> None:
        super().__init__(f"{len(ids)} ids already hold a newer version: {', '.join(ids[:5])}")
        self.ids = ids

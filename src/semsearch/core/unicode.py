"""Text every backend can take. JSON can carry an unpaired UTF-16 surrogate ("\\ud800") and
a shell argument undecodable bytes (Python keeps them as surrogates): neither is valid
Unicode, and SQLite, PostgreSQL and the tokenizer refuse them deep inside a write or a
search. Every place text enters checks it here, with one wording."""

from __future__ import annotations

from semsearch.errors import InputError


def require_unicode(text: str, what: str) -> None:
    """InputError naming ``what`` when ``text`` holds an unpaired surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} holds an unpaired surrogate at character {exc.start}, "
                         "which is not valid Unicode") from None


def shown(text: str) -> str:
    """``text`` printable in a message even when it is not valid Unicode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")

"""How long to wait before trying again: one rule for every retry loop (provider calls,
the LLM, a consumer reconnecting to its broker, SQLite files opened at the same moment)."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**attempt)], so clients that failed
    together do not come back together."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt, 60)))

"""The retry policy every outgoing push follows (Loki, remote SDK), as named constants."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry 429/500/502/503/504 and transport errors with jittered exponential backoff.

    ``Retry-After`` is honoured (capped at ``max_retry_after_s``); any other 4xx
    is not retried. One batch is retried for at most ``deadline_s``, then it is
    dropped *and counted*. A sender that can split its batch does so on
    ``split_statuses`` (the receiver refused the content, not the moment), to
    find the entries refused and send the rest.
    """

    retry_statuses: frozenset[int] = frozenset({429, 500, 502, 503, 504})
    split_statuses: frozenset[int] = frozenset({400, 413})
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20 %
    deadline_s: float = 300.0
    max_retry_after_s: float = 300.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** attempt)
        return base * (1 + rng.uniform(-self.jitter, self.jitter))


DEFAULT_RETRY = RetryPolicy()

"""Reads of profiles: CPU seconds per folded stack, for the flame graphs of a workflow or a run.

    store.profile_stacks(workflow="checkout", since_ns=t0)   # {"main;handler;query": 1.25, ...}
"""

from __future__ import annotations

import math

import orjson
from sqlalchemy import Engine, select

from .schema import profiles


class ProfileQueries:
    """The profile reads of :class:`~exporter.store.RunStore`."""

    engine: Engine

    def profile_stacks(self, workflow: str | None = None, correlation_id: str | None = None,
                       since_ns: int | None = None, until_ns: int | None = None) -> dict[str, float]:
        """CPU seconds per folded stack over the matching profiles (samples / sample rate; pstats self time)."""
        q = select(profiles.c.stacks, profiles.c.sample_rate_hz)
        if workflow:
            q = q.where(profiles.c.workflow == workflow)
        if correlation_id:
            q = q.where(profiles.c.correlation_id == correlation_id)
        if since_ns is not None:
            q = q.where(profiles.c.time_ns >= since_ns)
        if until_ns is not None:
            q = q.where(profiles.c.time_ns < until_ns)
        out: dict[str, float] = {}
        with self.engine.connect() as conn:
            for raw, rate in conn.execute(q):
                scale = 1.0 / rate if rate else 1.0
                for stack, n in orjson.loads(raw).items():
                    v = out.get(stack, 0.0) + n * scale
                    if math.isfinite(v):  # rows stored before the input limits may hold a 1e-320 Hz rate
                        out[stack] = v
        return out


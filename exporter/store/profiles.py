"""Reads of profiles: CPU seconds or memory bytes per folded stack, for the flame graphs of a workflow or a run,
and a run's memory (peak, net, allocated and held bytes).

    store.profile_stacks(workflow="checkout", since_ns=t0)             # {"main;handler;query": 1.25, ...}
    store.profile_stacks(correlation_id="c-1", kind="held")            # bytes still held at the run's end
    store.run_memory("c-1")                                            # RunMemory(peak_bytes=..., ...) or None
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import orjson
from sqlalchemy import Engine, select

from ..profiles import CPU_FORMATS, MEMORY_FORMATS
from .schema import profiles

#: What a flame graph can show: CPU time (folded and pstats profiles), bytes allocated, bytes still held.
PROFILE_KINDS = ("cpu", *MEMORY_FORMATS)


@dataclass(frozen=True, slots=True)
class RunMemory:
    """A run's memory as its memory profiles recorded it (bytes); several profiles of one run add up."""

    #: the most bytes traced at once during the run (the highest of its profiles)
    peak_bytes: int | None
    #: bytes allocated during the run and still held at its end
    net_bytes: int | None
    #: the sums of its ``alloc`` and ``held`` flame graphs
    alloc_bytes: int
    held_bytes: int
    profiles: int


class ProfileQueries:
    """The profile reads of :class:`~exporter.store.RunStore`."""

    engine: Engine

    def profile_stacks(self, workflow: str | None = None, correlation_id: str | None = None,
                       since_ns: int | None = None, until_ns: int | None = None,
                       kind: str = "cpu") -> dict[str, float]:
        """Per folded stack over the matching profiles: CPU seconds (``kind="cpu"``: samples / sample rate,
        pstats self time), or bytes (``alloc``: allocated during the runs, ``held``: still held at their end)."""
        if kind not in PROFILE_KINDS:
            raise ValueError(f"kind must be one of {', '.join(PROFILE_KINDS)}, got {kind!r}")
        q = select(profiles.c.stacks, profiles.c.sample_rate_hz)
        q = q.where(profiles.c.format.in_(CPU_FORMATS) if kind == "cpu" else profiles.c.format == kind)
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
                scale = 1.0 / rate if rate and kind == "cpu" else 1.0
                for stack, n in orjson.loads(raw).items():
                    v = out.get(stack, 0.0) + n * scale
                    if math.isfinite(v):  # rows stored before the input limits may hold a 1e-320 Hz rate
                        out[stack] = v
        return out

    def run_memory(self, correlation_id: str) -> RunMemory | None:
        """The run's memory from its ``alloc`` and ``held`` profiles; None when it has none."""
        q = (select(profiles.c.format, profiles.c.stacks, profiles.c.peak_bytes, profiles.c.net_bytes)
             .where(profiles.c.correlation_id == correlation_id, profiles.c.format.in_(MEMORY_FORMATS)))
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        if not rows:
            return None
        totals = dict.fromkeys(MEMORY_FORMATS, 0)
        peaks: list[int] = []
        nets: dict[str, list[int]] = {f: [] for f in MEMORY_FORMATS}
        for fmt, raw, peak, net in rows:
            totals[fmt] += sum(v for v in orjson.loads(raw).values() if isinstance(v, int))
            if peak is not None:
                peaks.append(peak)
            if net is not None:
                nets[fmt].append(net)
        # the SDK writes one alloc and one held profile per traced run, both with the run's net: count it once
        net_list = nets["held"] or nets["alloc"]
        return RunMemory(peak_bytes=max(peaks) if peaks else None, net_bytes=sum(net_list) if net_list else None,
                         alloc_bytes=totals["alloc"], held_bytes=totals["held"], profiles=len(rows))

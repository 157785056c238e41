"""Is an error group new, spiking or steady? (pure)

- **new**: first seen inside the recent window.
- **spiking**: the recent window's count is far above what the baseline rate
  predicts: a one-sided Poisson test (p < 0.001) and at least 3× the expected
  count and 5 occurrences. With no baseline occurrences, 5 in the recent window.
- **steady**: anything else.

    trend(times_ns, first_seen_ns, now_ns, recent_s=3600, window_s=86400)  # "spiking"
"""

from __future__ import annotations

from typing import TypedDict

from scipy import stats


class Trend(TypedDict):
    trend: str  # new, spiking or steady
    recent_count: int
    expected_recent_count: float
    baseline_count: int


def trend(times_ns: list[int], first_seen_ns: int, now_ns: int, recent_s: float = 3600.0,
          window_s: float = 86400.0) -> Trend:
    recent_start = now_ns - int(recent_s * 1e9)
    window_start = now_ns - int(window_s * 1e9)
    recent = sum(1 for t in times_ns if t >= recent_start)
    baseline = sum(1 for t in times_ns if window_start <= t < recent_start)
    base_s = max(recent_start - max(window_start, first_seen_ns), 0) / 1e9
    expected = baseline / base_s * recent_s if base_s > 0 else 0.0
    if first_seen_ns >= recent_start:
        label = "new"
    elif expected > 0:
        p = float(stats.poisson.sf(recent - 1, expected))
        label = "spiking" if p < 1e-3 and recent >= 3 * expected and recent >= 5 else "steady"
    else:
        label = "spiking" if recent >= 5 else "steady"
    return {"trend": label, "recent_count": recent, "expected_recent_count": round(expected, 3),
            "baseline_count": baseline}

"""CPU profiles in: folded stacks or cProfile pstats dumps → self time per function (pure).

Folded stacks are what py-spy (``--format raw``), perf + stackcollapse and
async-profiler (``collapsed``) write: one line per distinct stack, root first,
frames separated by ``;``, then a space and a sample count::

    main;handle_checkout;charge_card;ssl_read 42

The leaf frame's self time is ``count / sample_rate_hz`` seconds. A pstats
dump (``cProfile ... -o out.pstats``, ``Profile.dump_stats``) carries each
function's own time (``tt``) directly.
"""

from __future__ import annotations

import marshal
from dataclasses import dataclass, field

from .errors import FlowscopeError

MAX_FRAME = 200


class ProfileError(FlowscopeError):
    """A profile could not be read; the message names the line or the format."""


@dataclass(slots=True)
class Profile:
    workflow: str
    self_seconds: dict[str, float]
    correlation_id: str | None = None
    #: folded stacks with sample counts, kept for flame graphs (issue 5); pstats gives none
    stacks: dict[str, int] = field(default_factory=dict)
    sample_rate_hz: float | None = None
    #: when the profile was taken (ns since the epoch); 0 means when it is stored
    time_ns: int = 0


def parse_folded(text: str, sample_rate_hz: float) -> tuple[dict[str, float], dict[str, int]]:
    """(self seconds per leaf function, samples per stack); ProfileError names the bad line."""
    if not sample_rate_hz > 0:
        raise ProfileError(f"sample_rate must be > 0 Hz, got {sample_rate_hz}")
    self_s: dict[str, float] = {}
    stacks: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        stack, sep, count = line.rpartition(" ")
        if not sep or not stack.strip():
            raise ProfileError(f"line {n}: expected 'frame;frame;... count', got {line[:80]!r}")
        if not count.isdigit() or int(count) <= 0:
            raise ProfileError(f"line {n}: the sample count must be a positive whole number, got {count[:20]!r}")
        frames = stack.strip().split(";")
        if any(not f.strip() for f in frames):
            raise ProfileError(f"line {n}: empty frame in {stack[:80]!r}")
        leaf = frames[-1].strip()[:MAX_FRAME]
        samples = int(count)
        self_s[leaf] = self_s.get(leaf, 0.0) + samples / sample_rate_hz
        stacks[stack.strip()] = stacks.get(stack.strip(), 0) + samples
    if not stacks:
        raise ProfileError("the profile has no samples")
    return self_s, stacks


def _pstats_name(key) -> str:
    filename, line, func = key
    if filename == "~":  # built-ins, as pstats prints them
        return func[:MAX_FRAME]
    short = filename.rsplit("/", 1)[-1]
    return f"{func} ({short}:{line})"[:MAX_FRAME]


def parse_pstats(data: bytes) -> dict[str, float]:
    """Self seconds per function from a cProfile/pstats dump (a marshalled stats dict)."""
    try:
        stats = marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        raise ProfileError("not a cProfile pstats dump (marshal data expected)") from None
    if not isinstance(stats, dict) or not stats:
        raise ProfileError("not a cProfile pstats dump: expected a non-empty dict of function stats")
    out: dict[str, float] = {}
    for key, value in stats.items():
        if not (isinstance(key, tuple) and len(key) == 3 and isinstance(value, tuple) and len(value) == 5
                and isinstance(value[2], (int, float))):
            raise ProfileError("not a cProfile pstats dump: entries must be (file, line, function) → "
                               "(cc, nc, tt, ct, callers)")
        name = _pstats_name(key)
        out[name] = out.get(name, 0.0) + float(value[2])
    return out

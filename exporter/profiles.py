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
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import FlowscopeError
from .validate import clean_str

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


#: Sample rates outside this range are refused: below it one sample weighs hours, above it no sampler runs.
MIN_RATE_HZ, MAX_RATE_HZ = 1e-3, 1e6
#: One line's sample count at most (so sums stay exact in int64 and the seconds finite).
MAX_COUNT = 10**12
#: Deeper stacks keep their root-side and leaf-side frames around one marker frame.
MAX_STACK_FRAMES = 512
_COUNT = re.compile(r"[0-9]{1,13}").fullmatch


def check_rate(sample_rate_hz: Any) -> float:
    """The sample rate as a finite float in [MIN_RATE_HZ, MAX_RATE_HZ]; ProfileError otherwise."""
    ok = isinstance(sample_rate_hz, (int, float)) and not isinstance(sample_rate_hz, bool) \
        and MIN_RATE_HZ <= sample_rate_hz <= MAX_RATE_HZ
    if not ok:
        raise ProfileError(f"sample_rate must be a number of Hz from {MIN_RATE_HZ:g} to {MAX_RATE_HZ:g}, "
                           f"got {str(sample_rate_hz)[:40]}")
    return float(sample_rate_hz)


def _frames(stack: str, n: int) -> list[str]:
    frames = [clean_str(f.strip(), MAX_FRAME)[0] for f in stack.split(";")]
    if any(not f for f in frames):
        raise ProfileError(f"line {n}: empty frame in {stack[:80]!r}")
    if len(frames) > MAX_STACK_FRAMES:
        half = MAX_STACK_FRAMES // 2 - 1
        frames = [*frames[:half], f"[{len(frames) - 2 * half} frames]", *frames[-half:]]
    return frames


def parse_folded(text: str, sample_rate_hz: float) -> tuple[dict[str, float], dict[str, int]]:
    """(self seconds per leaf function, samples per stack); ProfileError names the bad line.

    Frames are cut to ``MAX_FRAME`` characters and stacks deeper than
    ``MAX_STACK_FRAMES`` lose their middle frames (one marker frame says how many),
    so every stack fits the store, the flame graphs and the exposition.
    """
    rate = check_rate(sample_rate_hz)
    self_s: dict[str, float] = {}
    stacks: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        stack, sep, count = line.rpartition(" ")
        if not sep or not stack.strip():
            raise ProfileError(f"line {n}: expected 'frame;frame;... count', got {line[:80]!r}")
        if not _COUNT(count) or not 0 < int(count) <= MAX_COUNT:
            raise ProfileError(f"line {n}: the sample count must be a positive whole number up to {MAX_COUNT}, "
                               f"got {count[:20]!r}")
        frames = _frames(stack.strip(), n)
        leaf = frames[-1]
        key = ";".join(frames)
        samples = int(count)
        self_s[leaf] = self_s.get(leaf, 0.0) + samples / rate
        stacks[key] = stacks.get(key, 0) + samples
    if not stacks:
        raise ProfileError("the profile has no samples")
    return self_s, stacks


def _pstats_name(key) -> str:
    filename, line, func = key
    if filename == "~":  # built-ins, as pstats prints them
        return clean_str(func, MAX_FRAME)[0]
    short = filename.rsplit("/", 1)[-1]
    return clean_str(f"{func} ({short}:{line})", MAX_FRAME)[0]


def _pstats_entry(key, value) -> bool:
    """Is this a (file: str, line: int, function: str) → (cc, nc, tt, ct, callers) entry with a sane time?"""
    if not (isinstance(key, tuple) and len(key) == 3 and isinstance(value, tuple) and len(value) == 5):
        return False
    filename, line, func = key
    tt = value[2]
    return (isinstance(filename, str) and isinstance(func, str) and isinstance(line, int)
            and isinstance(tt, (int, float)) and not isinstance(tt, bool) and 0 <= tt < 1e9)


def parse_pstats(data: bytes) -> dict[str, float]:
    """Self seconds per function from a cProfile/pstats dump (a marshalled stats dict).

    Every entry is checked before any is used, so a bad dump is refused whole.
    """
    try:
        stats = marshal.loads(data)
    except (EOFError, ValueError, TypeError, RecursionError):
        raise ProfileError("not a cProfile pstats dump (marshal data expected)") from None
    if not isinstance(stats, dict) or not stats:
        raise ProfileError("not a cProfile pstats dump: expected a non-empty dict of function stats")
    out: dict[str, float] = {}
    for key, value in stats.items():
        if not _pstats_entry(key, value):
            raise ProfileError("not a cProfile pstats dump: entries must be (file, line, function) → "
                               "(cc, nc, tt, ct, callers) with 0 <= tt < 1e9 seconds")
        name = _pstats_name(key)
        out[name] = out.get(name, 0.0) + float(value[2])
    return out

"""Profiles in: CPU folded stacks or cProfile pstats dumps → self time per function; memory folded stacks
→ bytes per function (pure).

Folded stacks are what py-spy (``--format raw``), perf + stackcollapse and
async-profiler (``collapsed``) write: one line per distinct stack, root first,
frames separated by ``;``, then a space and a sample count::

    main;handle_checkout;charge_card;ssl_read 42

The leaf frame's self time is ``count / sample_rate_hz`` seconds. A pstats
dump (``cProfile ... -o out.pstats``, ``Profile.dump_stats``) carries each
function's own time (``tt``) directly; it is read by a bounded reader of its
marshal subset, never by ``marshal.loads`` (unsafe on untrusted bytes).

A memory profile is folded stacks whose counts are bytes, in one of two formats:
``alloc`` (bytes each stack allocated during the run) and ``held`` (bytes each
stack allocated that were still held when the run ended), with the run's peak and
net bytes beside them (:func:`parse_memory`; the SDK's tracemalloc profiler makes them).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .errors import FlowscopeError
from .validate import clean_str

MAX_FRAME = 200

#: A value of the marshal subset a pstats dump uses (see :class:`_Marshal`).
Marshalled: TypeAlias = "bool | int | float | str | tuple[Marshalled, ...] | dict[Marshalled, Marshalled] | None"


class ProfileError(FlowscopeError):
    """A profile could not be read; the message names the line or the format."""


#: Memory profile formats: bytes allocated per stack during a run, and bytes still held per stack at its end.
FORMAT_ALLOC, FORMAT_HELD = "alloc", "held"
MEMORY_FORMATS = (FORMAT_ALLOC, FORMAT_HELD)
#: CPU profile formats: folded stacks with sample counts, and cProfile pstats dumps.
CPU_FORMATS = ("folded", "pstats")
#: Peak and net bytes of one run are refused past this (1 PiB): a number beyond it is a broken profile.
MAX_BYTES = 2**50


@dataclass(slots=True)
class Profile:
    """One profile of a workflow (or of one run, with ``correlation_id``): CPU or memory.

    A CPU profile has ``self_seconds`` per function and ``stacks`` of sample counts (folded; none for
    pstats). A memory profile has ``format`` ``alloc`` or ``held``, ``stacks`` of bytes, ``self_seconds``
    empty, and the run's ``peak_bytes`` / ``net_bytes``. Picklable: the writer process receives it whole.

        Profile("checkout", {}, "c-1", {"main;load;read_rows": 4_194_304}, format="held", peak_bytes=9_000_000)
    """

    workflow: str
    self_seconds: dict[str, float]
    correlation_id: str | None = None
    #: folded stacks with sample counts, kept for flame graphs (issue 5); pstats gives none; bytes in memory profiles
    stacks: dict[str, int] = field(default_factory=dict)
    sample_rate_hz: float | None = None
    #: when the profile was taken (ns since the epoch); 0 means when it is stored
    time_ns: int = 0
    #: ``alloc`` or ``held`` for a memory profile; empty for CPU (``folded`` with stacks, else ``pstats``)
    format: str = ""
    #: a memory profile's run: the most bytes traced at once, and the bytes allocated and still held at its end
    peak_bytes: int | None = None
    net_bytes: int | None = None

    @property
    def is_memory(self) -> bool:
        return self.format in MEMORY_FORMATS

    @property
    def kind(self) -> str:
        """The stored format: ``alloc``, ``held``, ``folded`` or ``pstats``."""
        return self.format or ("folded" if self.stacks else "pstats")

    def self_bytes(self) -> dict[str, int]:
        """A memory profile's bytes per leaf function (what its own lines allocated)."""
        out: dict[str, int] = {}
        for stack, n in self.stacks.items():
            leaf = stack.rsplit(";", 1)[-1]
            out[leaf] = out.get(leaf, 0) + n
        return out


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
    if stack.isascii() and "\x00" not in stack:
        frames = [f.strip() for f in stack.split(";")]
        if any(len(f) > MAX_FRAME for f in frames):
            frames = [clean_str(f, MAX_FRAME)[0] for f in frames]
    else:
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
    counts, stacks = _parse_counts(text, "sample count", "samples")
    return {leaf: n / rate for leaf, n in counts.items()}, stacks


def check_bytes(value: Any, name: str, signed: bool = False) -> int:
    """A byte count given as text or a number: a whole number within ±``MAX_BYTES`` (>= 0 unless ``signed``)."""
    text = str(value).strip()[:40]
    body = text[1:] if signed and text.startswith("-") else text
    if not (isinstance(value, (int, str)) and not isinstance(value, bool) and _COUNT(body)):
        raise ProfileError(f"{name} must be a whole number of bytes, got {text!r}")
    n = int(text)
    if abs(n) > MAX_BYTES:
        raise ProfileError(f"{name} must be at most {MAX_BYTES} bytes (1 PiB), got {text!r}")
    return n


def parse_memory(text: str, fmt: str, peak_bytes: Any = None, net_bytes: Any = None) -> Profile:
    """A memory profile (workflow still to be set) from folded stacks whose counts are bytes.

    ``fmt`` is ``alloc`` or ``held``; ``peak_bytes`` (>= 0) and ``net_bytes`` (signed: a run may free
    more than it allocates under other tools) are optional. ProfileError names the bad line or field.

        parse_memory("main;load;read_rows 4194304\n", "held", peak_bytes="9000000").stacks
    """
    if fmt not in MEMORY_FORMATS:
        raise ProfileError(f"a memory profile's format is alloc or held, got {str(fmt)[:40]!r}")
    peak = None if peak_bytes is None else check_bytes(peak_bytes, "peak_bytes")
    net = None if net_bytes is None else check_bytes(net_bytes, "net_bytes", signed=True)
    _, stacks = _parse_counts(text, "byte count", "bytes")
    return Profile("", {}, None, stacks, None, format=fmt, peak_bytes=peak, net_bytes=net)


def _parse_counts(text: str, what: str, unit: str) -> tuple[dict[str, int], dict[str, int]]:
    """(count per leaf, count per stack) of folded lines ``frame;frame;... count``."""
    self_s: dict[str, int] = {}
    stacks: dict[str, int] = {}
    seen: dict[str, tuple[str, str]] = {}  # stack text -> (key, leaf): a profile repeats its stacks
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        stack, sep, count = line.rpartition(" ")
        if not sep or not stack.strip():
            raise ProfileError(f"line {n}: expected 'frame;frame;... count', got {line[:80]!r}")
        if not _COUNT(count) or not 0 < int(count) <= MAX_COUNT:
            raise ProfileError(f"line {n}: the {what} must be a positive whole number up to {MAX_COUNT}, "
                               f"got {count[:20]!r}")
        stack = stack.strip()
        known = seen.get(stack)
        if known is None:
            frames = _frames(stack, n)
            known = seen[stack] = (";".join(frames), frames[-1])
        key, leaf = known
        samples = int(count)
        self_s[leaf] = self_s.get(leaf, 0) + samples
        stacks[key] = stacks.get(key, 0) + samples
    if not stacks:
        raise ProfileError(f"the profile has no {unit}")
    return self_s, stacks


def _pstats_name(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":  # built-ins, as pstats prints them
        return clean_str(func, MAX_FRAME)[0]
    short = filename.rsplit("/", 1)[-1]
    return clean_str(f"{func} ({short}:{line})", MAX_FRAME)[0]


def _pstats_entry(key: Marshalled, value: Marshalled) -> tuple[tuple[str, int, str], float] | None:
    """(key, own time ``tt``) of a (file: str, line: int, function: str) → (cc, nc, tt, ct, callers) entry with a
    sane time, else None."""
    if not (isinstance(key, tuple) and len(key) == 3 and isinstance(value, tuple) and len(value) == 5):
        return None
    filename, line, func = key
    tt = value[2]
    if (isinstance(filename, str) and isinstance(func, str) and isinstance(line, int)
            and isinstance(tt, (int, float)) and not isinstance(tt, bool) and 0 <= tt < 1e9):
        return (filename, line, func), float(tt)
    return None


class _Marshal:
    """A bounded reader of the marshal subset a pstats dump uses (dicts, tuples, str, int, float, refs).

    ``marshal.loads`` is documented as unsafe on untrusted bytes, and it is: a fuzzed 1 KiB dump
    crashed the interpreter, and one flipped length bit made it allocate 6 GB. This reader checks
    every length against the bytes that remain before it allocates, nests at most ``MAX_NEST`` deep,
    and reads nothing else (no code objects, no sets of arbitrary types). Format: CPython's
    ``Python/marshal.c`` (version 4; ``FLAG_REF`` = 0x80 marks objects later named by ``r``).
    """

    MAX_NEST = 8

    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0
        self.refs: list[Marshalled] = []

    def _take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ProfileError("not a cProfile pstats dump: truncated or bad marshal data")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def _i32(self) -> int:
        i: int = struct.unpack("<i", self._take(4))[0]
        return i

    def _count(self, n: int) -> int:
        if n < 0 or n > len(self.data) - self.pos:  # every item takes at least one byte
            raise ProfileError("not a cProfile pstats dump: bad marshal length")
        return n

    def read(self, depth: int = 0) -> Marshalled:
        if depth > self.MAX_NEST:
            raise ProfileError("not a cProfile pstats dump: nested too deeply")
        code = self._take(1)[0]
        flag, t = code & 0x80, chr(code & 0x7F)
        slot = None
        v: Marshalled
        if flag:
            slot = len(self.refs)
            self.refs.append(None)
        if t == "r":
            i = self._i32()
            if not 0 <= i < len(self.refs) or self.refs[i] is None:
                raise ProfileError("not a cProfile pstats dump: bad marshal reference")
            return self.refs[i]
        if t in "NTF":
            v = {"N": None, "T": True, "F": False}[t]
        elif t == "i":
            v = self._i32()
        elif t == "l":
            n = self._i32()
            digits = self._take(2 * self._count(min(abs(n), 64)))  # 64 x 15 bits: far past any real count
            if abs(n) > 64:
                raise ProfileError("not a cProfile pstats dump: integer too large")
            big: int = sum(d << (15 * k) for k, d in enumerate(struct.unpack(f"<{abs(n)}H", digits)))
            v = -big if n < 0 else big
        elif t == "g":
            v = struct.unpack("<d", self._take(8))[0]
        elif t in "uatAszZ":
            n = self._take(1)[0] if t in "zZ" else self._count(self._i32())
            raw = bytes(self._take(n))
            try:
                v = raw.decode("utf-8", "surrogatepass") if t != "s" else raw.decode("latin-1")
            except UnicodeDecodeError:
                raise ProfileError("not a cProfile pstats dump: bad string") from None
        elif t in "()":
            n = self._take(1)[0] if t == ")" else self._count(self._i32())
            v = tuple(self.read(depth + 1) for _ in range(n))
        elif t == "{":
            d: dict[Marshalled, Marshalled] = {}
            if slot is not None:
                self.refs[slot] = d
            # a memoryview equals the bytes of the same content; mypy's strict equality doesn't know it
            while self.data[self.pos:self.pos + 1] != b"0":  # type: ignore[comparison-overlap]
                k = self.read(depth + 1)
                try:
                    hash(k)
                except TypeError:
                    raise ProfileError("not a cProfile pstats dump: unhashable key") from None
                d[k] = self.read(depth + 1)
            self._take(1)
            v = d
        else:
            raise ProfileError(f"not a cProfile pstats dump: marshal type {t!r} is not part of one")
        if slot is not None:
            self.refs[slot] = v
        return v


def _loads_pstats(data: bytes) -> Marshalled:
    m = _Marshal(data)
    stats = m.read()
    if m.pos != len(data):
        raise ProfileError("not a cProfile pstats dump: trailing bytes after the stats")
    return stats


def parse_pstats(data: bytes) -> dict[str, float]:
    """Self seconds per function from a cProfile/pstats dump (a marshalled stats dict).

    Every entry is checked before any is used, so a bad dump is refused whole.
    """
    if not data:
        raise ProfileError("not a cProfile pstats dump (marshal data expected)")
    stats = _loads_pstats(data)
    if not isinstance(stats, dict) or not stats:
        raise ProfileError("not a cProfile pstats dump: expected a non-empty dict of function stats")
    out: dict[str, float] = {}
    for key, value in stats.items():
        entry = _pstats_entry(key, value)
        if entry is None:
            raise ProfileError("not a cProfile pstats dump: entries must be (file, line, function) → "
                               "(cc, nc, tt, ct, callers) with 0 <= tt < 1e9 seconds")
        name = _pstats_name(entry[0])
        out[name] = out.get(name, 0.0) + entry[1]
    return out

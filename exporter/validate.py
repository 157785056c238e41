"""The model's boundary: what every decoder checks before a value may enter (pure).

Every input path (OTLP protobuf and JSON, native JSON, profiles) runs its values
through these functions once, at decode. Past this point the pipeline, the
metric store, the exposition, Loki and the run store trust what they get, so the
limits here are the ones every sink can hold:

- **times** are nanoseconds since the epoch in ``0 < t <= 2**63 - 1`` (int64,
  what PostgreSQL's BIGINT and SQLite's INTEGER store, up to 2262-04-11);
- **label-bearing names** (workflow, service, component, operation, error type)
  are strings of at most :data:`MAX_LABEL_CHARS` characters; longer ones are cut
  with ``…`` and the cut is counted, so a stream of 1 KiB span names can't blow
  up /metrics;
- **strings** never hold a NUL (PostgreSQL refuses it) or a lone surrogate (it
  can't be encoded as UTF-8); both become U+FFFD;
- **integers** in attributes and state fit in 64 bits; a larger one is kept as
  its decimal text (JSON can carry it, BIGINT and orjson can't);
- **nested values** (attributes, metadata, state) are at most :data:`MAX_DEPTH`
  levels deep and :data:`MAX_NODES` values big; what lies past either is replaced
  by a marker string, and the cut is counted.

The span's own fields (ids, times, names, status, layer) are refused per item
with :class:`Invalid` (reason, detail), which decoders turn into a
``Rejection``. Attribute and state *values* are sanitised rather than refused:
one odd attribute should not cost the span that carries it.

    clean_label("GET /checkout\\x00")           # ('GET /checkout\\ufffd', False)
    clean_value({"n": 2**70, "s": "a\\x00"})     # ({'n': '1180591620717411303424', 's': 'a\\ufffd'}, False)
"""

from __future__ import annotations

import math
from typing import Any

#: The latest time a value may carry: int64 nanoseconds (2262-04-11T23:47:16Z).
MAX_TIME_NS = 2**63 - 1
#: The same limit in epoch seconds, for inputs given in seconds.
MAX_EPOCH_S = MAX_TIME_NS // 1_000_000_000
MIN_INT, MAX_INT = -(2**63), 2**63 - 1
#: Label values (and the run store's name columns) hold at most this many characters.
MAX_LABEL_CHARS = 200
#: correlation_id is a primary key column of this width.
MAX_ID_CHARS = 128
#: Free text: error messages, stack traces.
MAX_TEXT_CHARS = 32_768
#: One string inside attributes, metadata or state.
MAX_VALUE_CHARS = 16_384
MAX_DEPTH = 32
MAX_NODES = 10_000
TOO_DEEP = f"[flowscope: nested deeper than {MAX_DEPTH} levels]"
TOO_MANY = f"[flowscope: more than {MAX_NODES} values]"
_ELLIPSIS = "…"


class Invalid(Exception):
    """One item fails the boundary check: ``reason`` is a bounded label value, ``detail`` says what."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def clean_str(s: str, limit: int) -> tuple[str, bool]:
    """``s`` cut to ``limit`` characters, with NUL and lone surrogates replaced: (text, was_cut)."""
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (JSON "\ud800"): not encodable, so not storable
            s = s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")  # before the cut: it lengthens
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    cut = len(s) > limit
    if cut:
        s = s[:limit - 1] + _ELLIPSIS
    return s, cut


def clean_label(v: Any) -> tuple[str, bool]:
    """A name that becomes a label value: a bounded, clean string, and whether it was cut.

    Scalars are turned into their text; containers are refused (:class:`Invalid`).
    """
    if type(v) is not str:
        if isinstance(v, (dict, list, tuple, set)) or v is None:
            raise Invalid("invalid_value", f"expected a string, got {type(v).__name__}")
        v = str(v)
    if len(v) <= MAX_LABEL_CHARS and v.isascii() and "\x00" not in v:
        return v, False  # the common case, checked in three C calls
    return clean_str(v, MAX_LABEL_CHARS)


def clean_text(v: Any, limit: int = MAX_TEXT_CHARS) -> str | None:
    """Free text (a message, a stack): None stays None, anything else becomes a bounded clean string."""
    if v is None:
        return None
    if type(v) is not str:
        v = str(v) if not isinstance(v, (dict, list, tuple)) else _short_repr(v)
    return clean_str(v, limit)[0]


def _short_repr(v: Any) -> str:
    """Text for a container given where a string belongs (never recursing without bound)."""
    try:
        import orjson

        return orjson.dumps(clean_value(v)[0], default=str).decode()[:MAX_TEXT_CHARS]
    except (TypeError, ValueError):
        return f"<{type(v).__name__}>"


def show(v: Any, n: int = 40) -> str:
    """A value for an error message: a string's first ``n`` characters, a number, or a container's type
    name (never a repr of user-shaped nesting, which can recurse past the interpreter's limit)."""
    if isinstance(v, str):
        return repr(v[:n])
    if isinstance(v, (bool, float)) or v is None:
        return repr(v)
    if isinstance(v, int):
        return _num(v)
    return f"a{'n' if type(v).__name__[0] in 'aeiou' else ''} {type(v).__name__}"


def time_ok(ns: Any) -> bool:
    return type(ns) is int and 0 < ns <= MAX_TIME_NS


def check_interval(start: Any, end: Any) -> None:
    """Refuse a span whose times are not ``0 < start <= end <= 2**63-1`` nanoseconds."""
    if not (time_ok(start) and time_ok(end) and start <= end):
        raise Invalid("invalid_time", f"needs 0 < start <= end <= {MAX_TIME_NS} ns, got {_num(start)}..{_num(end)}")


def _num(v: Any) -> str:
    s = str(v) if type(v) is int and abs(v) < 10**40 else repr(v) if not isinstance(v, int) else "(a huge number)"
    return s[:60]


class _Budget:
    __slots__ = ("cut", "nodes")

    def __init__(self) -> None:
        self.nodes = MAX_NODES
        self.cut = False


def _clean(v: Any, depth: int, b: _Budget) -> Any:
    t = type(v)
    b.nodes -= 1
    if b.nodes < 0:
        b.cut = True
        return TOO_MANY
    if t is str:
        if len(v) <= MAX_VALUE_CHARS and v.isascii() and "\x00" not in v:
            return v
        v, cut = clean_str(v, MAX_VALUE_CHARS)
        b.cut |= cut
        return v
    if t is int:
        return v if MIN_INT <= v <= MAX_INT else str(v)[:64] if v.bit_length() < 4000 else "(a huge integer)"
    if t is float or t is bool or v is None:
        return v
    if t is dict or t is list or t is tuple or isinstance(v, (dict, list, tuple)):
        if depth >= MAX_DEPTH:  # bounded recursion: depth never passes MAX_DEPTH
            b.cut = True
            return TOO_DEEP
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if type(k) is not str:
                    k = str(k) if isinstance(k, (int, float, bool)) or k is None else f"<{type(k).__name__}>"
                k = clean_str(k, MAX_LABEL_CHARS)[0] if not (k.isascii() and len(k) <= MAX_LABEL_CHARS
                                                            and "\x00" not in k) else k
                out[k] = _clean(x, depth + 1, b)
                if b.nodes < 0:
                    break
            return out
        out_l = []
        for x in v:
            out_l.append(_clean(x, depth + 1, b))
            if b.nodes < 0:
                break
        return out_l
    if isinstance(v, int):  # an int subclass (IntEnum): its plain value
        return _clean(int(v), depth, b)
    if isinstance(v, float):
        return float(v)
    if isinstance(v, str):
        return _clean(str(v), depth, b)
    # bytes, datetimes, objects the SDK was handed: their text, bounded
    return clean_str(str(v) if not isinstance(v, (bytes, bytearray)) else bytes(v[:MAX_VALUE_CHARS]).hex(),
                     MAX_VALUE_CHARS)[0]


def clean_value(v: Any) -> tuple[Any, bool]:
    """A copy of an attribute/metadata/state value that every sink can hold, and whether anything was cut.

    Flat dicts of short plain strings and small numbers, the common case, come back as they are.
    """
    if type(v) is dict:
        for k, x in v.items():
            t = type(x)
            if t is str:
                if not (x.isascii() and len(x) <= MAX_VALUE_CHARS and "\x00" not in x):
                    break
            elif t is int:
                if not MIN_INT <= x <= MAX_INT:
                    break
            elif not (t is float or t is bool or x is None):
                break
            if not (type(k) is str and k.isascii() and len(k) <= MAX_LABEL_CHARS and "\x00" not in k):
                break
        else:
            return v, False
    b = _Budget()
    out = _clean(v, 0, b)
    return out, b.cut


def finite_seconds(v: Any, field: str, upper: float = 1e12) -> float:
    """A finite, non-negative number of seconds below ``upper``; else :class:`Invalid`."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 <= v < upper):
        raise Invalid("invalid_value", f"{field} must be a finite number from 0 to {upper:g}, got {_num(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise Invalid("invalid_value", f"{field} must be finite")
    return f

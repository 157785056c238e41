#!/usr/bin/env python3
"""Structure-aware fuzzing of the ingest decoders: no input can hurt what was accepted.

Use this for the long run behind issue 9 (the suite's bounded version is
``tests/test_fuzz_decoders.py``). For each decoder it starts from valid
requests (OTLP built with opentelemetry-proto, native batches, folded stacks,
real ``cProfile`` dumps), mutates fields with hostile values (integers past 64
bits, NaN/inf/subnormal floats, 300-deep AnyValues and state, non-strings where
strings belong, NUL, invalid UTF-8, lone surrogates, 10k-character names,
unicode digits, wrong enums) or flips bytes of the encoded body, and classifies
every case:

- **clean**: the decoder returned a result;
- **refused**: it raised its documented error (``DecodeError`` / ``ProfileError``,
  or the body was not JSON/UTF-8 where the HTTP view refuses it first);
- **crash**: any other exception.

Every span, error record and profile a decoder accepts is then pushed through
each sink: a real SQLite run store (``RunStore.write``) and the metrics
pipeline, whose exposition must render and parse back with prometheus_client
(OpenMetrics and text). An item that makes a sink raise is **poison**.

Example::

    nice -n 10 .venv/bin/python scripts/fuzz.py --cases 100000 --seed 1
    .venv/bin/python scripts/fuzz.py --decoders otlp_json,native --cases 5000 --md /tmp/fuzz_findings.md
    .venv/bin/python scripts/fuzz.py --seed 1 --replay otlp_json:1234    # rerun one case, with its traceback

Reproducers (up to 20 distinct per finding class and decoder) go to ``--out``
(JSON); each has a one-line Python call, or a ``--replay`` command when the
body is too big to inline. Cases are derived from (seed, decoder, index) alone,
so any case can be regenerated.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import marshal
import os
import random
import re
import resource
import select as io_select
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from sqlalchemy import func, select

from exporter import conventions as c
from exporter import runstore
from exporter.db import make_engine
from exporter.decode import DecodeResult, native, otlp
from exporter.errors import DecodeError
from exporter.exposition import finish, render
from exporter.metrics import MetricStore
from exporter.model import ErrorRecord, Span
from exporter.pipeline import Pipeline
from exporter.profiles import Profile, ProfileError, parse_folded, parse_pstats
from exporter.runstore import RunStore
from tests.otlp_data import deep_any_value_wire, request, span, to_json
from tests.otlp_data import ld as _ld

MAX_FINDINGS = 20  # distinct reproducers kept per finding class and decoder
INLINE_BYTES = 4096  # bodies up to this size are inlined in the reproducer's Python call
SLOW_S = 2.0  # a case slower than this to decode is reported as slow

# --- hostile values ------------------------------------------------------------------------------

NAN, INF = float("nan"), float("inf")
DIGITS40 = "9" * 40
DIGITS400 = "1" + "0" * 399
U64_EDGES = [0, 1, 2**31 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1]
I64_EDGES = [0, -1, 1, -2**63, 2**63 - 1, -2**31, 2**53 + 1]
BIG_INTS = [*I64_EDGES, 2**63, 2**64 - 2, 2**64, -2**63 - 1, 10**40, -10**40, 10**399]
INT_STRINGS = ["0", "-1", "1", str(2**63 - 1), str(2**63), str(2**64 - 2), str(2**64), str(-2**63 - 1),
               DIGITS40, DIGITS400, "²", "٣", "1²", "١٢٣", "٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣٣", "1e3", "0x10", " 12", "12 ", "+5",
               "1_000", "", "NaN", "inf", "1.5", "-0", "\x00", "1\x00"]
FLOATS = [NAN, INF, -INF, 1e-320, 5e-324, -0.0, 0.0, 1.7976931348623157e308, 1e308, -1.0, 1e19, 2.0**63, 2.0**64]
NUMBER_TOKENS = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "1" * 400, "-0", "1E-320", "0.0000001e-400",
                 "18446744073709551616", "-9223372036854775809"]
PB_STRINGS = ["", "\x00", "a\x00b", "x" * 10_000, "y" * 201, "z" * 501, "²", "٣", "\n", "a\nb", '"', "\\", "\\n",
              "{", "}", 'a="b"', "# EOF", "\r\n# EOF\n", "é", "🙂", "\u2028", "\u0085", "\ufeff", "\x1b[31m", "\x7f",
              " ", "\t", "null", "NaN", "<script>alert(1)</script>", "' OR 1=1 --", "le", "+Inf"]
STRINGS = PB_STRINGS + ["\ud800", "x\udfff", "\ud83d", "a\udc80b"]
WANTED = sorted(otlp.WANTED_KEYS) + ["http.method", "url.full", "rpc.system", "user.id", "password",
                                     c.ATTR_DB_PATTERN, "telemetry.sdk.language"]
DEPTHS = [50, 100, 253, 254, 255, 256, 300, 500]
JSON_DEPTHS = DEPTHS + [1000, 1100, 3000]
LAYERS = list(c.LAYERS)
T0 = 1_795_000_000_000_000_000


def pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


def short(v: Any, n: int = 60) -> str:
    """A description of a hostile value that stays one line."""
    if isinstance(v, Raw):
        v = v.text
    if isinstance(v, str) and len(v) > n:
        return f"{v[:12]!r}…({len(v)} chars)"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 10**30:
        return f"<{len(str(abs(v)))}-digit int{' <0' if v < 0 else ''}>"
    if isinstance(v, (bytes, bytearray)) and len(v) > n:
        return f"{bytes(v[:12])!r}…({len(v)} bytes)"
    r = repr(v)
    return r if len(r) <= n else r[:n] + "…"


# --- JSON text with hostile tokens ----------------------------------------------------------------


_RAW: dict[str, str] = {}  # placeholder → JSON text, for the case being generated (cleared per case)
_RAW_TOKEN = re.compile(r'"\\u0002raw(\d+)\\u0003"')


class Raw(str):
    """JSON text spliced in verbatim (deep nesting, number tokens no parser round-trips).

    The str itself is a placeholder that :func:`jdump` swaps for the text, so that encoding stays
    in ``json.dumps`` (C, no Python recursion however deep the document).
    """

    def __new__(cls, text: str):
        key = str(len(_RAW))
        _RAW[key] = text
        self = super().__new__(cls, f"\x02raw{key}\x03")
        self.text = text
        return self

    def __repr__(self) -> str:
        return repr(self.text)


def jdump(obj: Any, ascii_only: bool = True) -> bytes:
    """JSON bytes for ``obj``: NaN/Infinity tokens for non-finite floats, lone surrogates escaped
    (``ascii_only``) or raw as CESU bytes, :class:`Raw` spliced. ``json.loads`` reads it all back."""
    text = json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True)
    if "\\u0002raw" in text:
        text = _RAW_TOKEN.sub(lambda m: _RAW[m.group(1)], text)
    return text.encode("utf-8", "surrogatepass")


BODY_BUDGET = 2_000_000  # bytes a repeating mutation may grow a body to (the default body limit is larger)


def within_budget(part: Any, times: int) -> int:
    """How many copies of ``part`` fit the body budget, at most ``times``."""
    return max(1, min(times, BODY_BUDGET // max(len(jdump(part)), 1)))


def deep_array_json(n: int) -> Raw:
    return Raw('{"arrayValue":{"values":[' * n + '{"stringValue":"leaf"}' + "]}}" * n)


def deep_kvlist_json(n: int) -> Raw:
    return Raw('{"kvlistValue":{"values":[{"key":"k","value":' * n + '{"intValue":"1"}' + "}]}}" * n)


def deep_plain_json(n: int, kind: str = "dict") -> Raw:
    if kind == "list":
        return Raw("[" * n + "1" + "]" * n)
    return Raw('{"a":' * n + "1" + "}" * n)


def deep_dict(n: int) -> dict:
    d: dict = {"leaf": 1}
    for _ in range(n):
        d = {"a": d}
    return d


def hostile_string(rng: random.Random, surrogates: bool = True) -> str:
    s = pick(rng, STRINGS if surrogates else PB_STRINGS)
    if rng.random() < 0.2:  # embed it in something ordinary
        s = "checkout" + s + "step"
    return s


def hostile_json_scalar(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.25:
        return pick(rng, BIG_INTS)
    if r < 0.4:
        return pick(rng, FLOATS)
    if r < 0.5:
        return Raw(pick(rng, NUMBER_TOKENS))
    if r < 0.75:
        return hostile_string(rng)
    if r < 0.85:
        return pick(rng, [True, False, None])
    if r < 0.92:
        return pick(rng, INT_STRINGS)
    return pick(rng, [[], {}, [1, "a"], {"k": "v"}, [[[]]], {"": None}])


def hostile_json_any(rng: random.Random) -> Any:
    """Any JSON value, including deep nesting."""
    r = rng.random()
    if r < 0.1:
        return deep_plain_json(pick(rng, JSON_DEPTHS), pick(rng, ["dict", "list"]))
    if r < 0.15:
        return deep_dict(pick(rng, DEPTHS))
    if r < 0.2:
        return {str(i): hostile_json_scalar(rng) for i in range(rng.choice([2, 50, 2000]))}
    if r < 0.25:
        return [hostile_json_scalar(rng) for _ in range(rng.choice([2, 50, 2000]))]
    return hostile_json_scalar(rng)


def mutate_bytes(rng: random.Random, body: bytes, utf8: bool) -> tuple[bytes, str]:
    """One byte-level mutation; ``utf8`` adds mutations that break UTF-8 inside text."""
    b = bytearray(body)
    ops = ["flip", "insert", "delete", "duplicate", "truncate", "append", "varint", "zero", "swap"]
    if utf8:
        ops += ["bad_utf8"] * 4
    op = pick(rng, ops)
    n = len(b)
    i = rng.randrange(n + 1) if n else 0
    if op == "flip" and n:
        for _ in range(rng.randint(1, 8)):
            j = rng.randrange(n)
            b[j] ^= 1 << rng.randrange(8)
    elif op == "insert":
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif op == "delete" and n:
        del b[i:i + rng.randint(1, 32)]
    elif op == "duplicate" and n:
        j = rng.randrange(n)
        b[i:i] = b[j:j + rng.randint(1, 256)] * rng.randint(1, 20)
    elif op == "truncate":
        del b[i:]
    elif op == "append":
        b += bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif op == "varint":
        b[i:i] = b"\xff" * rng.randint(9, 11) + bytes([rng.randrange(128)])
    elif op == "zero" and n:
        b[i:i + 8] = bytes(len(b[i:i + 8]))
    elif op == "swap" and n > 2:
        j = rng.randrange(n)
        b[i:i + 1], b[j:j + 1] = b[j:j + 1], b[i:i + 1]
    elif op == "bad_utf8":
        seq = pick(rng, [b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80", b"\xfe\xff"])
        q = b.find(b'"', i)  # inside a JSON string: right after a quote
        j = q + 1 if q >= 0 and rng.random() < 0.8 else i
        b[j:j] = seq
        return bytes(b), f"bytes: insert {seq!r} at {j}"
    return bytes(b), f"bytes: {op} at {i}"


# --- OTLP bases -----------------------------------------------------------------------------------


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(8 * n) | 1:0{2 * n}x}"


def otlp_base(rng: random.Random) -> ExportTraceServiceRequest:
    """A small realistic request (the shapes of tests/otlp_data.py), ids from ``rng``."""
    tid = _hex(rng, 16)
    start = T0 + rng.randrange(10**12)
    root = span("POST /checkout", trace_id=tid, span_id=_hex(rng, 8), kind=2, start=start, duration_ns=840_000_000,
                attrs={"http.request.method": "POST", "url.path": "/checkout", c.ATTR_WORKFLOW[0]: "checkout",
                       c.ATTR_CORRELATION_ID[0]: "c-" + _hex(rng, 4)})
    shape = rng.randrange(4)
    if shape == 0:
        kids = [span("INSERT orders", trace_id=tid, span_id=_hex(rng, 8), parent=root["span_id"], kind=3,
                     start=start + 1000, attrs={"db.system": "postgresql", "db.statement": "INSERT INTO orders"}),
                span("charge", trace_id=tid, span_id=_hex(rng, 8), parent=root["span_id"], kind=3, start=start + 5000,
                     attrs={"http.request.method": "POST", "peer.service": "payments"}, error=True,
                     message="card declined", events=[("exception", {
                         "exception.type": "CardDeclined", "exception.message": "card 4242 declined",
                         "exception.stacktrace": "Traceback (most recent call last):\n  File \"pay.py\", line 3"})])]
        return request(kids + [root], service="shop")
    if shape == 1:
        kids = [span("publish order", trace_id=tid, span_id=_hex(rng, 8), parent=root["span_id"], kind=4,
                     start=start + 10, attrs={"messaging.system": "kafka"}),
                span("GET cart", trace_id=tid, span_id=_hex(rng, 8), parent=root["span_id"], kind=3,
                     start=start + 20, attrs={"db.system": "redis"})]
        return request(kids + [root], service="orders", resource={"deployment.environment": "prod"})
    if shape == 2:
        one = span("step", trace_id=tid, span_id=_hex(rng, 8), parent=_hex(rng, 8), kind=1, start=start,
                   attrs={c.ATTR_LAYER: "worker", "flowscope.status": "timeout", "error.type": "Timeout",
                          c.ATTR_COMPONENT: "billing", "retries": 3, "ratio": 0.5, "ok": True})
        return request([one], service="billing")
    return request([span("click", trace_id=tid, span_id=_hex(rng, 8), kind=1, start=start)], service="web",
                   resource={"telemetry.sdk.language": "webjs"})


# --- OTLP protobuf mutations (type-valid values: the schema is enforced by protobuf) ------------------


def _pb_spans(req) -> list[tuple[int, int, int]]:
    return [(ri, si, pi) for ri, rs in enumerate(req.resource_spans) for si, ss in enumerate(rs.scope_spans)
            for pi in range(len(ss.spans))]


def pb_hostile_any(rng: random.Random) -> tuple[AnyValue | bytes, str]:
    """A hostile AnyValue: a message, or its wire bytes when it is nested too deep to build as one."""
    r = rng.randrange(12)
    if r == 0:
        v = pick(rng, I64_EDGES)
        return AnyValue(int_value=v), f"int {v}"
    if r == 1:
        v = pick(rng, FLOATS)
        return AnyValue(double_value=v), f"double {v!r}"
    if r == 2:
        v = hostile_string(rng, surrogates=False)
        return AnyValue(string_value=v), f"string {short(v)}"
    if r in (3, 4):
        n = pick(rng, [1, 2, 10, 50, 90, *DEPTHS])
        kind = "array" if r == 3 else "kvlist"
        return deep_any_value_wire(kind, n), f"{kind}Value {n} deep"
    if r == 5:
        v = AnyValue()
        for _ in range(3):
            v.kvlist_value.values.add(key="dup")  # duplicate keys, values left unset
        return v, "kvlistValue with duplicate keys and unset values"
    if r == 6:
        return AnyValue(), "AnyValue with nothing set"
    if r == 7:
        v = AnyValue()
        for _ in range(rng.choice([1, 3, 1000])):
            v.array_value.values.add()
        return v, f"arrayValue of {len(v.array_value.values)} empty AnyValues"
    if r == 8:
        b = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 16, 5000])))
        return AnyValue(bytes_value=b), f"bytes {short(b)}"
    if r == 9:
        v = AnyValue()
        v.array_value.values.add(int_value=pick(rng, I64_EDGES))
        v.array_value.values.add(double_value=pick(rng, FLOATS))
        v.array_value.values.add(string_value=hostile_string(rng, surrogates=False))
        return v, "arrayValue of hostile scalars"
    if r == 10:
        v = AnyValue()
        kv = v.kvlist_value.values.add(key=hostile_string(rng, surrogates=False))
        kv.value.double_value = pick(rng, FLOATS)
        return v, f"kvlistValue {{{short(kv.key)}: {kv.value.double_value!r}}}"
    return AnyValue(bool_value=True), "bool true"


def _pb_set_attr(attrs, key: str, value: AnyValue) -> None:
    for kv in attrs:
        if kv.key == key:
            kv.value.CopyFrom(value)
            return
    attrs.append(KeyValue(key=key, value=value))


def _pb_kv(key: str, value: AnyValue | bytes) -> bytes:
    raw = value if isinstance(value, bytes) else value.SerializeToString()
    return _ld(1, key.encode()) + _ld(2, raw)


def _pb_detach_span(req, ri: int, si: int, pi: int, extra_span: bytes) -> bytes:
    """Remove span ``pi`` and return a resource_spans entry (wire) holding ``extra_span`` under the same resource."""
    rs = req.resource_spans[ri]
    del rs.scope_spans[si].spans[pi]
    return _ld(1, _ld(1, rs.resource.SerializeToString()) + _ld(2, _ld(2, extra_span)))


def pb_mutate(rng: random.Random, req: ExportTraceServiceRequest, extras: list[bytes]) -> str:
    """Mutate ``req`` in place; values too deep for python-protobuf go to ``extras`` as wire bytes."""
    where_ = _pb_spans(req)
    op = rng.randrange(14)
    if not where_ or op == 13:
        rs = req.resource_spans.add()
        ss = rs.scope_spans.add()
        for _ in range(rng.choice([0, 1, 500])):
            ss.spans.add()
        return f"structure: a resource with {len(ss.spans)} empty spans"
    ri, si, pi = pick(rng, where_)
    sp = req.resource_spans[ri].scope_spans[si].spans[pi]
    if op == 0:
        v = pick(rng, U64_EDGES)
        sp.start_time_unix_nano = v
        sp.end_time_unix_nano = pick(rng, [v, min(v + 1, 2**64 - 1), 2**64 - 1, 2**64 - 2])
        return f"span.startTimeUnixNano={v}, end={sp.end_time_unix_nano}"
    if op == 1:
        f = pick(rng, ["trace_id", "span_id", "parent_span_id"])
        v = pick(rng, [b"", bytes(8), bytes(16), b"\xff" * 16, b"\x01" * 15, b"\x01" * 17, b"\x01" * 8, b"\x00" * 7])
        setattr(sp, f, v)
        return f"span.{f}={v!r}"
    if op == 2:
        v = hostile_string(rng, surrogates=False)
        sp.name = v
        return f"span.name={short(v)}"
    if op == 3:
        v = pick(rng, [0, 6, -1, 2**31 - 1, -2**31, 99])
        sp.kind = v
        return f"span.kind={v}"
    if op == 4:
        v = pick(rng, [2, 3, -1, 2**31 - 1, 99])
        sp.status.code = v
        sp.status.message = hostile_string(rng, surrogates=False)
        return f"span.status.code={v} message={short(sp.status.message)}"
    if op in (5, 6, 7):
        key = pick(rng, WANTED) if rng.random() < 0.8 else hostile_string(rng, surrogates=False)
        value, d = pb_hostile_any(rng)
        if isinstance(value, bytes):
            extras.append(_pb_detach_span(req, ri, si, pi, sp.SerializeToString() + _ld(9, _pb_kv(key, value))))
        else:
            _pb_set_attr(sp.attributes, key, value)
        return f"span.attributes[{short(key)}]={d}"
    if op == 8:
        key = pick(rng, ["exception.message", "exception.type", "exception.stacktrace"])
        value, d = pb_hostile_any(rng)
        sp.status.code = 2
        if isinstance(value, bytes):
            event = _ld(2, b"exception") + _ld(3, _pb_kv(key, value))
            extras.append(_pb_detach_span(req, ri, si, pi, sp.SerializeToString() + _ld(11, event)))
        else:
            ev = next((e for e in sp.events if e.name == "exception"), None) or sp.events.add(name="exception")
            _pb_set_attr(ev.attributes, key, value)
        return f"span.status=ERROR, exception event {key}={d}"
    if op == 9:
        rs = req.resource_spans[ri]
        key = pick(rng, ["service.name", "service.name", "telemetry.sdk.language"])
        value, d = pb_hostile_any(rng)
        if isinstance(value, bytes):
            resource = rs.resource.SerializeToString() + _ld(1, _pb_kv(key, value))
            extras.append(_ld(1, _ld(1, resource) + b"".join(_ld(2, ss.SerializeToString()) for ss in rs.scope_spans)))
            del req.resource_spans[ri]
        else:
            _pb_set_attr(rs.resource.attributes, key, value)
        return f"resource.attributes[{key}]={d}"
    if op == 10:
        key = pick(rng, [c.ATTR_LAYER, c.ATTR_WORKFLOW[0], "flowscope.status", "db.system", c.ATTR_CORRELATION_ID[0]])
        value = pick(rng, [AnyValue.FromString(deep_any_value_wire("array", 1)),
                           AnyValue.FromString(deep_any_value_wire("kvlist", 1)),
                           AnyValue(int_value=2**63 - 1), AnyValue(double_value=NAN), AnyValue(bool_value=False)])
        _pb_set_attr(sp.attributes, key, value)
        return f"span.attributes[{key}]={value.WhichOneof('value')} (non-string)"
    if op == 11:
        n = rng.choice([2, 200])
        ss = req.resource_spans[ri].scope_spans[si]
        for _ in range(n):
            ss.spans.add().CopyFrom(sp)
        return f"structure: the same span {n} more times"
    sp.events.add(name=hostile_string(rng, surrogates=False), time_unix_nano=pick(rng, U64_EDGES))
    return "span.events += hostile event"


def gen_otlp_protobuf(rng: random.Random) -> tuple[Any, list[str]]:
    req = otlp_base(rng)
    extras: list[bytes] = []
    desc = [pb_mutate(rng, req, extras) for _ in range(rng.choice([0, 1, 1, 1, 2, 3]))]
    body = req.SerializeToString() + b"".join(extras)  # repeated resource_spans: concatenation appends
    if rng.random() < 0.35 or not desc:
        for _ in range(rng.choice([1, 1, 2, 4])):
            body, d = mutate_bytes(rng, body, utf8=False)
            desc.append(d)
    return body, desc


# --- OTLP/JSON mutations (anything JSON can say) ------------------------------------------------------


def _j_spans(doc) -> list[dict]:
    def items(v, key):
        got = v.get(key) if isinstance(v, dict) else None
        return got if isinstance(got, list) else []

    return [sp for rs in items(doc, "resourceSpans") for ss in items(rs, "scopeSpans") for sp in items(ss, "spans")
            if isinstance(sp, dict)]


def json_hostile_any(rng: random.Random) -> tuple[Any, str]:
    """A hostile OTLP AnyValue in its JSON form."""
    r = rng.randrange(14)
    if r == 0:
        v = pick(rng, STRINGS + [5, [1], {"a": 1}, None, 1.5])
        return {"stringValue": v}, f"stringValue {short(v)}"
    if r == 1:
        v = pick(rng, BIG_INTS + INT_STRINGS + [1.5, NAN, True, [1], None])
        return {"intValue": v}, f"intValue {short(v)}"
    if r == 2:
        v = pick(rng, FLOATS + ["NaN", "Infinity", "-Infinity", "1e400", "x", True] + [Raw(pick(rng, NUMBER_TOKENS))])
        return {"doubleValue": v}, f"doubleValue {short(v)}"
    if r == 3:
        n = pick(rng, JSON_DEPTHS)
        return deep_array_json(n), f"arrayValue {n} deep"
    if r == 4:
        n = pick(rng, JSON_DEPTHS)
        return deep_kvlist_json(n), f"kvlistValue {n} deep"
    if r == 5:
        v = pick(rng, ["x", [], 5, {"values": "x"}, {"values": [1, "a", None]},
                       {"values": [{"key": 5, "value": {"intValue": 1}}]}, {"values": [{"value": {"intValue": "1"}}]},
                       {"values": [{"key": "a", "value": "notanobject"}]}, {"values": [{"key": "a"}]},
                       {"values": [{"key": ["x"], "value": {}}]},
                       {"values": [{"key": "a", "value": {"arrayValue": 7}}]},
                       {"values": [{"key": "a", "value": {"kvlistValue": {"values": [{"key": {}, "value": 1}]}}}]},
                       {"values": {"a": 1}}, {"values": [{"key": "\ud800", "value": {"intValue": DIGITS40}}]},
                       {"values": [{"key": "a", "value": {"intValue": 10**40}}]}])
        return {"kvlistValue": v}, f"malformed kvlistValue {short(v)}"
    if r == 6:
        v = pick(rng, ["x", 5, {"values": "x"}, {"values": [1, None, "s", []]}, {"values": [{"intValue": DIGITS40}]},
                       {"values": [{"intValue": 2**64}]}, {"values": [{"doubleValue": "NaN"}]},
                       {"values": [{"stringValue": "\ud800"}]}, {"values": [{"bytesValue": "!!"}]},
                       {"values": [{"kvlistValue": {"values": [{"key": "k", "value": {"doubleValue": "Infinity"}}]}}]}])
        return {"arrayValue": v}, f"malformed arrayValue {short(v)}"
    if r == 7:
        v = pick(rng, ["!!!", "QQ==", "", "QQ", "A" * 10_000, 5, None, "\ud800"])
        return {"bytesValue": v}, f"bytesValue {short(v)}"
    if r == 8:
        v = pick(rng, [{}, None, {"stringValue": "a", "intValue": "1"}, {"fooValue": 1}, [], "x", 7])
        return v, f"AnyValue {short(v)}"
    if r == 9:
        v = pick(rng, ["yes", 2, [], None, "true"])
        return {"boolValue": v}, f"boolValue {short(v)}"
    if r == 10:
        v = hostile_json_any(rng)
        return {"arrayValue": {"values": [v]}}, f"arrayValue [{short(v)}] (not an AnyValue)"
    if r == 11:
        inner, d = json_hostile_any(rng)
        return {"kvlistValue": {"values": [{"key": "k", "value": inner}]}}, f"kvlistValue {{k: {d}}}"
    if r == 12:
        inner, d = json_hostile_any(rng)
        return {"arrayValue": {"values": [inner, inner]}}, f"arrayValue [{d}, ...]"
    v = hostile_string(rng)
    return {"stringValue": v}, f"stringValue {short(v)}"


def _j_set_attr(attrs: list, key: Any, value: Any) -> None:
    for kv in attrs:
        if isinstance(kv, dict) and kv.get("key") == key:
            kv["value"] = value
            return
    attrs.append({"key": key, "value": value})


def json_mutate(rng: random.Random, doc: dict) -> str:
    spans = _j_spans(doc)
    sp = pick(rng, spans) if spans else None
    op = rng.randrange(17)
    if sp is None or op == 16:
        return json_structure(rng, doc)
    if op in (0, 1):
        v = pick(rng, BIG_INTS + INT_STRINGS + FLOATS + [True, None, [], {}, Raw(pick(rng, NUMBER_TOKENS))])
        if op == 0:
            sp["startTimeUnixNano"] = v
            sp["endTimeUnixNano"] = pick(rng, [v, v, str(2**64 - 1), DIGITS400])
            return f"span.startTimeUnixNano={short(v)}, end={short(sp['endTimeUnixNano'])}"
        f = pick(rng, ["startTimeUnixNano", "endTimeUnixNano"])
        sp[f] = v
        return f"span.{f}={short(v)}"
    if op == 2:
        f = pick(rng, ["traceId", "spanId", "parentSpanId"])
        v = pick(rng, ["", "0" * 32, "0" * 16, "F" * 32, "F" * 16, "g" * 32, "٣" * 32, "٣" * 16, "1" * 31,
                       "1" * 10_000, 5, None, [], "\x00" * 16, "\ud800" * 16, "AAAAAAAAAAAAAAAAAAAAAA=="])
        sp[f] = v
        return f"span.{f}={short(v)}"
    if op == 3:
        v = pick(rng, STRINGS + [5, [], {}, None, True])
        sp["name"] = v
        return f"span.name={short(v)}"
    if op == 4:
        v = pick(rng, [0, 6, -1, 2**31, 2**64, 10**40, "SPAN_KIND_SERVER", "bogus", "", 1.5, None, [], NAN])
        sp["kind"] = v
        return f"span.kind={short(v)}"
    if op == 5:
        code = pick(rng, [2, 3, -1, 2**64, "STATUS_CODE_ERROR", "ERROR", "x", 1.5, None, [], {}])
        msg = pick(rng, STRINGS + [5, [], {}, None])
        sp["status"] = pick(rng, [{"code": code, "message": msg}, None, "x", [], {"code": code}])
        return f"span.status={short(sp['status'])}"
    if op in (6, 7, 8, 9):
        key = pick(rng, WANTED) if rng.random() < 0.8 else pick(rng, STRINGS + [5, None, []])
        value, d = json_hostile_any(rng)
        sp.setdefault("attributes", [])
        if isinstance(sp["attributes"], list):
            _j_set_attr(sp["attributes"], key, value)
        return f"span.attributes[{short(key)}]={d}"
    if op == 10:
        key = pick(rng, ["exception.message", "exception.type", "exception.stacktrace"])
        value, d = json_hostile_any(rng)
        sp["status"] = {"code": 2}
        evs = sp.setdefault("events", [])
        ev = next((e for e in evs if isinstance(e, dict) and e.get("name") == "exception"), None)
        if ev is None:
            ev = {"name": "exception", "attributes": []}
            evs.append(ev)
        _j_set_attr(ev.setdefault("attributes", []), key, value)
        return f"span.status=ERROR, exception event {key}={d}"
    if op == 11:
        key = pick(rng, ["service.name", "service.name", "telemetry.sdk.language"])
        value, d = json_hostile_any(rng)
        rs = doc["resourceSpans"][0]
        attrs = rs.setdefault("resource", {}).setdefault("attributes", [])
        _j_set_attr(attrs, key, value)
        return f"resource.attributes[{key}]={d}"
    if op == 12:
        key = pick(rng, [c.ATTR_LAYER, c.ATTR_WORKFLOW[0], c.ATTR_WORKFLOW[1], "flowscope.status", "db.system",
                         "error.type", c.ATTR_CORRELATION_ID[0], c.ATTR_COMPONENT, "messaging.system"])
        value = pick(rng, [{"arrayValue": {"values": [{"stringValue": "api"}]}},
                           {"kvlistValue": {"values": [{"key": "a", "value": {"stringValue": "b"}}]}},
                           {"intValue": "7"}, {"intValue": DIGITS40}, {"doubleValue": "NaN"}, {"boolValue": True},
                           {"bytesValue": "QQ=="}, {"stringValue": "x" * 10_000}, {"stringValue": "a\x00b"},
                           {"stringValue": "\ud800"}])
        sp.setdefault("attributes", []).append({"key": key, "value": value})
        return f"span.attributes[{key}]={short(value)}"
    if op == 13:
        v = hostile_json_any(rng)
        sp[pick(rng, ["unknownField", "droppedAttributesCount", "links", "traceState", "flags"])] = v
        return f"span: unknown/ignored field = {short(v)}"
    if op == 14:
        ev = {"name": pick(rng, STRINGS + [5, None]), "timeUnixNano": pick(rng, BIG_INTS + INT_STRINGS),
              "attributes": pick(rng, [None, "x", [1], [{"key": "exception.message"}]])}
        sp.setdefault("events", []).append(ev)
        return f"span.events += {short(ev)}"
    f = pick(rng, ["attributes", "events", "status"])
    v = pick(rng, ["x", 5, {}, [None], [[]], NAN])
    sp[f] = v
    return f"span.{f}={short(v)} (wrong container type)"


def json_structure(rng: random.Random, doc: dict) -> str:
    op = rng.randrange(8)
    if op == 0:
        v = pick(rng, [{}, "x", None, 5, [None], [[]], [{"scopeSpans": "x"}], [{"scopeSpans": [{"spans": "x"}]}],
                       [{"scopeSpans": [{"spans": [1, "a", None]}]}], [{"resource": "x"}]])
        doc["resourceSpans"] = v
        return f"structure: resourceSpans={short(v)}"
    if op == 1:
        n = pick(rng, JSON_DEPTHS)
        doc["unknown"] = deep_plain_json(n, pick(rng, ["dict", "list"]))
        return f"structure: unknown top-level field nested {n} deep"
    if op == 2:
        spans = _j_spans(doc)
        if spans:
            ss = doc["resourceSpans"][0]["scopeSpans"][0]
            ss["spans"] = spans * within_budget(spans, rng.choice([10, 300]))
            return f"structure: {len(ss['spans'])} copies of the spans"
    if op == 3:
        doc.clear()
        doc["resourceSpans"] = [{"scopeSpans": [{"spans": [{}] * rng.choice([1, 1000])}]}]
        return "structure: empty span objects"
    if op == 4:
        doc["resourceSpans"] = deep_plain_json(pick(rng, JSON_DEPTHS), "list")
        return "structure: resourceSpans deeply nested lists"
    if op == 5:
        doc[pick(rng, STRINGS)] = hostile_json_any(rng)
        return "structure: hostile top-level key"
    if op == 6:
        rss = doc.get("resourceSpans") if isinstance(doc.get("resourceSpans"), list) else []
        doc["resourceSpans"] = rss * within_budget(rss, rng.choice([2, 100]))
        return "structure: resourceSpans repeated"
    doc["resourceSpans"] = [{"resource": {"attributes": [{"key": "service.name", "value": v}]},
                             "scopeSpans": doc.get("resourceSpans", [{}])[0].get("scopeSpans", [])
                             if isinstance(doc.get("resourceSpans"), list) and doc["resourceSpans"]
                             and isinstance(doc["resourceSpans"][0], dict) else []}
                            for v in [json_hostile_any(rng)[0]]]
    return "structure: service.name hostile on a fresh resource"


def gen_otlp_json(rng: random.Random) -> tuple[Any, list[str]]:
    r = rng.random()
    if r < 0.02:
        body = pick(rng, [b"", b"null", b"[]", b"{}", b'"x"', b"1e400", b"NaN", b"\xff\xfe", b"{" * 2000,
                          b"[" * 5000 + b"]" * 5000, b'{"resourceSpans":' + b"[" * 600 + b"]" * 600 + b"}"])
        return body, [f"whole body {short(body)}"]
    doc = to_json(otlp_base(rng))
    desc = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        try:
            desc.append(json_mutate(rng, doc))
        except (TypeError, KeyError, IndexError, AttributeError):  # an earlier mutation changed the shape
            pass
    body = jdump(doc, ascii_only=rng.random() < 0.5)
    if rng.random() < 0.15:
        body, d = mutate_bytes(rng, body, utf8=True)
        desc.append(d)
    return body, desc


# --- native batches -------------------------------------------------------------------------------

STEP_FIELDS = ["correlation_id", "workflow_type", "layer", "component", "operation", "status", "started_at",
               "ended_at", "duration_ms", "trace_id", "span_id", "step_id", "parent_span_id", "error_type",
               "error_message", "stack_trace", "metadata", "state", "service"]
WORKFLOW_FIELDS = ["correlation_id", "workflow_type", "status", "started_at", "ended_at", "duration_ms", "trace_id",
                   "user", "error_type", "error_message", "metadata", "service"]
ERROR_FIELDS = ["error_type", "message", "layer", "component", "workflow_type", "correlation_id", "trace_id",
                "span_id", "category", "stack_trace", "time", "service", "context"]
TIME_VALUES = ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2263-01-01T00:00:00Z",
               "1970-01-01T00:00:00Z", "1970-01-01T00:00:00.000001Z", "4999-12-31T23:59:59Z", "2026-11-23T10:00:00",
               "2026-11-23T10:00:00.999999999Z", "２０２６-11-23T10:00:00Z", "2026-11-23T10:00:00+99:00", DIGITS40,
               "nan", "", "\x00", 95_617_583_999.999, 95_617_584_000, 2**63, 2**64, 10**40, 1e-320, -0.0, 1, 1e19,
               True, NAN, INF, [], {}]
DURATIONS = [0, -0.0, 1e-320, 5e-324, 2_592_000_000, 2_592_000_000.0001, 2**63, 2**64, 10**40, NAN, INF, -1, "12",
             True, None, [], 1e15]


def native_base(rng: random.Random) -> dict:
    cid = pick(rng, ["c-" + _hex(rng, 4), "3f2504e0-4f89-41d3-9a0c-" + _hex(rng, 6)])
    t = 1_795_000_000 + rng.randrange(10**6)
    steps = [{"correlation_id": cid, "workflow_type": "checkout", "layer": pick(rng, LAYERS),
              "component": "postgres", "operation": "insert_order", "status": pick(rng, ["success", "failed", "ok"]),
              "started_at": t + 0.12, "duration_ms": 12.5, "metadata": {"rows": 1, "table": "orders"},
              "state": {"order_id": 7, "cart": {"items": [1, 2]}}}
             for _ in range(rng.choice([1, 1, 2]))]
    doc: dict = {"steps": steps}
    if rng.random() < 0.6:
        doc["workflows"] = [{"correlation_id": cid, "workflow_type": "checkout", "status": "success",
                             "started_at": "2026-11-23T10:00:00Z", "duration_ms": 840, "user": "u-42"}]
    if rng.random() < 0.4:
        doc["errors"] = [{"error_type": "PaymentTimeout", "message": "gateway timed out after 5000 ms",
                          "layer": "external", "component": "payments", "workflow_type": "checkout",
                          "correlation_id": cid, "time": t, "context": {"attempt": 2}}]
    return doc


def native_value(rng: random.Random, fld: str) -> Any:
    r = rng.random()
    if fld in ("metadata", "state", "context"):
        if r < 0.45:
            return deep_dict(pick(rng, DEPTHS))
        if r < 0.55:
            return {"k": deep_dict(pick(rng, DEPTHS))}
        if r < 0.85:
            return {pick(rng, ["n", "password", "user.id", "\ud800", "a\x00b", "x" * 10_000]): hostile_json_any(rng)}
        return hostile_json_any(rng)
    if fld in ("started_at", "ended_at", "time") and r < 0.7:
        return pick(rng, TIME_VALUES)
    if fld == "duration_ms" and r < 0.7:
        return pick(rng, DURATIONS)
    if fld == "layer" and r < 0.3:
        return pick(rng, LAYERS + ["LAYER", "database\x00", ["api"], {"a": 1}])
    if fld == "status" and r < 0.3:
        return pick(rng, ["SUCCESS", "TimeOut", "Ok", "ſuccess", "ǅ", ["ok"], 1])
    if fld in ("trace_id", "span_id", "step_id", "parent_span_id") and r < 0.6:
        return pick(rng, ["", "0" * 32, "0" * 16, "F" * 32, "٣" * 32, "٣" * 16, "a" * 16 + "\n", 5, ["a"]])
    if r < 0.6:
        return hostile_string(rng)
    return hostile_json_any(rng)


def native_mutate(rng: random.Random, doc: Any) -> str:
    if "__replace__" in doc or not doc.get("steps"):
        return ""
    op = rng.random()
    if op < 0.06:
        v = pick(rng, [{"steps": "x"}, {"spans": []}, {"steps": [1, None, "x", []]}, [], [None], "x", 5, None,
                       {"steps": [{}] * 1000}, {"workflows": {}}, {"errors": [7]},
                       {"steps": deep_plain_json(pick(rng, JSON_DEPTHS), "list")}])
        doc.clear()
        doc["__replace__"] = v
        return f"structure: body={short(v)}"
    if op < 0.09:
        doc["__multiply__"] = rng.choice([50, 1000])  # applied last, within a size budget
        return f"structure: steps repeated up to {doc['__multiply__']} times"
    kind = pick(rng, ["steps", "steps", "steps", "workflows", "errors"])
    recs = doc.get(kind)
    if not recs:
        kind, recs = "steps", doc["steps"]
    rec = pick(rng, recs)
    fields = {"steps": STEP_FIELDS, "workflows": WORKFLOW_FIELDS, "errors": ERROR_FIELDS}[kind]
    fld = pick(rng, fields)
    if rng.random() < 0.05:
        rec.pop(fld, None)
        return f"{kind}[].{fld} removed"
    v = native_value(rng, fld)
    rec[fld] = v
    if fld == "started_at" and rng.random() < 0.5:
        rec.pop("duration_ms", None)
        rec["ended_at"] = v
    return f"{kind}[].{fld}={short(v)}"


def gen_native(rng: random.Random) -> tuple[Any, list[str]]:
    doc = native_base(rng)
    desc = [d for d in (native_mutate(rng, doc) for _ in range(rng.choice([1, 1, 1, 2, 3]))) if d]
    times = doc.pop("__multiply__", 1)
    if "__replace__" in doc:
        doc = doc["__replace__"]
    elif times > 1:
        doc["steps"] = doc["steps"] * within_budget(doc["steps"], times)
    body = jdump(doc, ascii_only=rng.random() < 0.5)
    if rng.random() < 0.3:  # the decoder's API takes parsed JSON: hand it Python's own parse
        try:
            return ("python", json.loads(body.decode("utf-8", "surrogatepass"))), desc + [
                "input: Python objects (json.loads semantics), not via orjson"]
        except RecursionError:  # nested deeper than Python's json reads: send it as a body instead
            pass
    if rng.random() < 0.1:
        body, d = mutate_bytes(rng, body, utf8=True)
        desc.append(d)
    return ("orjson", body), desc


# --- folded stacks --------------------------------------------------------------------------------

FOLDED_BASE = [
    "main;handle_checkout;charge_card;ssl_read 42",
    "main;handle_checkout;charge_card;json.dumps 7",
    "main;handle_checkout;load_cart;psycopg.execute 120",
    "main;idle 3",
    "worker;process_order;render_invoice;jinja2.render 55",
]
RATES = [NAN, INF, -INF, 0.0, -0.0, 1e-320, 5e-324, 1e-300, 1e308, 1.7976931348623157e308, -1.0, 100.0, 99.0, 1e-9]


def gen_folded(rng: random.Random) -> tuple[Any, list[str]]:
    lines = [pick(rng, FOLDED_BASE) for _ in range(rng.randint(1, 5))]
    rate = 100.0 if rng.random() < 0.6 else pick(rng, RATES)
    desc = [f"sample_rate={rate!r}"] if rate != 100.0 else []
    surrogates = False
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        i = rng.randrange(len(lines))
        stack, _, count = lines[i].rpartition(" ")
        op = rng.randrange(8)
        if op in (0, 1):
            count = pick(rng, INT_STRINGS + [str(2**64), str(2**64 - 1), str(2**63), str(10**20), "1" * 5000])
            desc.append(f"line {i} count={short(count)}")
        elif op == 2:
            frame = pick(rng, STRINGS + ["", " ", ";", "a b", "x" * 201])
            surrogates |= any(0xD800 <= ord(ch) <= 0xDFFF for ch in frame)
            frames = stack.split(";")
            frames[rng.randrange(len(frames))] = frame
            stack = ";".join(frames)
            desc.append(f"line {i} frame={short(frame)}")
        elif op == 3:
            n = pick(rng, [1000, 3000, 10_000])
            stack = ";".join(f"f{k}" for k in range(n))
            desc.append(f"line {i} stack {n} frames deep")
        elif op == 4:
            sep = pick(rng, ["\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r\n"])
            stack = stack.replace(";", sep, 1)
            desc.append(f"line {i}: a {sep!r} inside the stack")
        elif op == 5:
            lines.extend([lines[i]] * rng.choice([100, 2000]))
            desc.append(f"line {i} repeated")
        elif op == 6:
            lines.extend(f"main;f{k} {count}" for k in range(rng.choice([100, 1000])))
            desc.append("many distinct stacks")
        else:
            count = pick(rng, ["1.5", "1e3", "0x10", "", " ", "-5", "٣", "²"])
            desc.append(f"line {i} count={count!r}")
        lines[i] = f"{stack} {count}"
    text = "\n".join(lines) + pick(rng, ["\n", "", "\n\n# comment\n"])
    if surrogates:
        desc.append("input: text with lone surrogates (never from an HTTP body, which must be UTF-8)")
        return (text, rate), desc
    body = text.encode("utf-8")
    if rng.random() < 0.1:
        body, d = mutate_bytes(rng, body, utf8=True)
        desc.append(d)
    return (body, rate), desc


# --- pstats dumps ---------------------------------------------------------------------------------


def _workload(n: int) -> int:
    total = 0
    for i in range(n):
        total += len(json.dumps({"i": i, "s": str(i)}))
        total += sum(sorted(range(i % 7)))
    return total


_PSTATS_BASES: list[dict] = []


def pstats_bases() -> list[dict]:
    """Real cProfile stats dicts (what ``Profile.dump_stats`` marshals), made once per process."""
    if not _PSTATS_BASES:
        for n in (50, 200):
            prof = cProfile.Profile()
            prof.runcall(_workload, n)
            prof.create_stats()
            _PSTATS_BASES.append(dict(prof.stats))
    return _PSTATS_BASES


def gen_pstats(rng: random.Random) -> tuple[Any, list[str]]:
    stats = dict(pick(rng, pstats_bases()))
    keys = list(stats)
    desc = []
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        k = pick(rng, keys)
        if not (k in stats and isinstance(stats[k], tuple) and len(stats[k]) == 5):
            continue
        cc, nc, tt, ct, callers = stats[k]
        op = rng.randrange(8)
        if op in (0, 1):
            tt = pick(rng, FLOATS + [2**64, 10**40, -1, True, None, "1", 2**63])
            stats[k] = (cc, nc, tt, ct, callers)
            desc.append(f"{k[2]}: tt={short(tt)}")
        elif op == 2:
            pos = rng.randrange(3)
            v = pick(rng, [None, 5, -1, 2**64, b"bytes", "~", "", "x" * 10_000, "a\x00b", "\ud800", ("t",), 1.5, "/"])
            nk = list(k)
            nk[pos] = v
            del stats[k]
            stats[tuple(nk)] = (cc, nc, tt, ct, callers)
            desc.append(f"key field {pos}={short(v)}")
        elif op == 3:
            v = pick(rng, [(cc, nc, tt), (cc, nc, tt, ct, callers, 1), [cc, nc, tt, ct, callers], None, tt, {}])
            stats[k] = v
            desc.append(f"value={short(v)}")
        elif op == 4:
            del stats[k]
            stats[pick(rng, [k[:2], frozenset(k), "x", 5, (None, None, None)]) if rng.random() < 0.8 else k] = (
                cc, nc, tt, ct, callers)
            desc.append("malformed key")
        elif op == 5:
            for i in range(rng.choice([100, 3000])):
                stats[("f.py", i, f"fn{i}")] = (1, 1, 1e-6, 1e-6, {})
            desc.append("many functions")
        elif op == 6:
            for i in range(100):
                stats[(f"/a/{i}/same.py", 1, "dup")] = (1, 1, pick(rng, [1e308, 1.0, 2**63]), 1.0, {})
            desc.append("one name from many files, huge self times")
        else:
            stats[k] = (cc, nc, tt, ct, {("x", 1, "y"): pick(rng, [(1, 1, NAN, NAN), None, deep_dict(50)])})
            desc.append("hostile callers")
    if rng.random() < 0.03:
        obj = pick(rng, [{}, [], None, "x", [stats], {"a": 1}])
        desc.append(f"top level={short(obj)}")
        stats = obj
    try:
        body = marshal.dumps(stats)
    except ValueError:  # unmarshallable value: skip that mutation
        body = marshal.dumps(pick(rng, pstats_bases()))
    if rng.random() < 0.3 or not desc:
        for _ in range(rng.choice([1, 1, 2, 4])):
            body, d = mutate_bytes(rng, body, utf8=False)
            desc.append(d)
    return body, desc


# --- decoders and sinks ---------------------------------------------------------------------------


class Refused(Exception):
    """Refused before the decoder, as the HTTP view does (not JSON, not UTF-8)."""


def decode_otlp_protobuf(payload) -> list:
    return _checked(otlp.decode_protobuf(payload))


def decode_otlp_json(payload) -> list:
    return _checked(otlp.decode_json(payload))


def decode_native(payload) -> list:
    how, data = payload
    if how == "orjson":
        try:
            data = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise Refused("not JSON (orjson)") from None
    return _checked(native.decode(data))


def decode_folded(payload) -> list:
    data, rate = payload
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused("not UTF-8") from None
    self_s, stacks = parse_folded(data, rate)
    return [Profile("fuzz", self_s, None, stacks, rate)]


def decode_pstats(payload) -> list:
    return [Profile("fuzz", parse_pstats(payload), None)]


class BadResult(Exception):
    """The decoder returned something other than its documented result."""


def _checked(result) -> list:
    if not isinstance(result, DecodeResult):
        raise BadResult(f"returned {type(result).__name__}, not DecodeResult")
    for s in result.spans:
        if not isinstance(s, Span):
            raise BadResult(f"spans holds a {type(s).__name__}")
    for e in result.errors:
        if not isinstance(e, ErrorRecord):
            raise BadResult(f"errors holds a {type(e).__name__}")
    return [*result.spans, *result.errors]


@dataclass
class Decoder:
    name: str
    fmt: str  # the pipeline's format label
    generate: Callable[[random.Random], tuple[Any, list[str]]]
    decode: Callable[[Any], list]
    refused: tuple[type[BaseException], ...]
    call: str  # how the reproducer's one-liner calls the decoder
    guard: bool = False  # decode each chunk in a forked child first (marshal can kill the process)


DECODERS = {d.name: d for d in [
    Decoder("otlp_protobuf", c.FORMAT_OTLP_PROTOBUF, gen_otlp_protobuf, decode_otlp_protobuf, (DecodeError,),
            "otlp.decode_protobuf({body})"),
    Decoder("otlp_json", c.FORMAT_OTLP_JSON, gen_otlp_json, decode_otlp_json, (DecodeError,),
            "otlp.decode_json({body})"),
    Decoder("native", c.FORMAT_NATIVE, gen_native, decode_native, (DecodeError, Refused),
            "native.decode({body})"),
    Decoder("folded", "folded", gen_folded, decode_folded, (ProfileError, Refused),
            "parse_folded({body}, {rate})"),
    Decoder("pstats", "pstats", gen_pstats, decode_pstats, (ProfileError,), "parse_pstats({body})", guard=True),
]}


class Lost(Exception):
    """A sink took an accepted item without raising, but it is not there afterwards."""


def _samples(families, name: str) -> float:
    return sum(smp.value for fam in families for smp in fam.samples if smp.name == name)


def metrics_sink(items: list, fmt: str) -> None:
    """Ingest into a fresh metrics pipeline, render both expositions and parse them back; then every
    accepted step and profile must be counted in the parsed OpenMetrics (else :class:`Lost`)."""
    store = MetricStore(series_limit=10**9)
    pipe = Pipeline(store)
    spans = [it for it in items if isinstance(it, Span)]
    if spans:
        pipe.ingest(spans, fmt)
    for it in items:
        if isinstance(it, ErrorRecord):
            pipe.record_error(it)
        elif isinstance(it, Profile):
            pipe.record_profile(it, fmt)
    pipe.close()  # releases spans still waiting for their trace's root
    om = (render(store, openmetrics=True) + finish(True)).decode("utf-8")
    families = list(parse_openmetrics(om))
    for _ in parse_text(render(store, openmetrics=False).decode("utf-8")):
        pass
    want = sum(1 for s in spans if s.is_step)
    got = _samples(families, c.STEP_DURATION_SECONDS + "_count")
    if got != want:
        raise Lost(f"{got:g} of {want} accepted steps in {c.STEP_DURATION_SECONDS}_count")
    want = sum(1 for it in items if isinstance(it, Profile))
    got = _samples(families, c.PROFILES_RECEIVED_TOTAL)
    if got != want:
        raise Lost(f"{got:g} of {want} accepted profiles in {c.PROFILES_RECEIVED_TOTAL}")


class StoreSink:
    """A real SQLite run store in a temporary file; a fresh one per chunk of cases."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.engine = make_engine(f"sqlite:///{path}" if path else "sqlite:///:memory:")
        self.store = RunStore(self.engine)

    def write(self, items: list) -> None:
        self.store.write(items)

    def span_keys(self) -> set[tuple[str, str]]:
        with self.engine.connect() as conn:
            return {tuple(r) for r in conn.execute(select(runstore.spans.c.correlation_id, runstore.spans.c.span_id))}

    def profile_count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(runstore.profiles)).scalar_one()

    def close(self) -> None:
        self.engine.dispose()
        if self.path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(str(self.path) + suffix).unlink(missing_ok=True)


# --- findings -------------------------------------------------------------------------------------


def where(exc: BaseException) -> str:
    """The innermost frame of our own code (exporter/, backend/), else the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/exporter/" in f.filename or "/backend/" in f.filename]
    f = (ours or frames or [None])[-1]
    if f is None:
        return "?"
    name = f.filename
    for root in (str(ROOT) + "/",):
        name = name.replace(root, "")
    if "site-packages/" in name:
        name = name.split("site-packages/", 1)[1]
    return f"{name}:{f.lineno} {f.name}"


@dataclass
class Case:
    decoder: str
    index: int
    payload: Any
    desc: list[str]

    def size(self) -> int:
        p = self.payload
        if isinstance(p, tuple):
            p = p[1] if isinstance(p[0], str) and p[0] in ("orjson", "python") else p[0]
        if isinstance(p, (bytes, str)):
            return len(p)
        return len(jdump(p))


@dataclass
class Finding:
    kind: str  # crash | poison | slow
    sink: str | None
    exc_type: str
    message: str
    location: str
    count: int = 0
    best: Case | None = None
    shape: list[str] = field(default_factory=list)


class Findings:
    def __init__(self):
        self.by_key: dict[tuple, Finding] = {}

    def add(self, kind: str, decoder: str, case: Case, exc: BaseException | None, sink: str | None = None,
            note: str = "") -> None:
        etype = type(exc).__name__ if exc is not None else note
        loc = where(exc) if exc is not None else "-"
        key = (decoder, kind, sink, etype, loc)
        f = self.by_key.get(key)
        if f is None:
            msg = str(exc) if exc is not None else note
            f = self.by_key[key] = Finding(kind, sink, etype, msg[:300], loc)
        f.count += 1
        rank = (len(case.desc), case.size())
        if f.best is None or rank < (len(f.best.desc), f.best.size()):
            f.best = case
            f.message = (str(exc) if exc is not None else note)[:300]

    def for_decoder(self, decoder: str) -> list[Finding]:
        out = [f for (d, *_), f in self.by_key.items() if d == decoder]
        return sorted(out, key=lambda f: (f.kind, -f.count))


def reproducer(case: Case, seed: int, dec: Decoder) -> dict:
    p = case.payload
    rate = None
    if case.decoder == "folded":
        p, rate = p
    elif case.decoder == "native":
        how, p = p
        if how == "python":
            p = jdump(p)  # Python's json reads it back to the same objects
    body = p.encode("utf-8", "surrogatepass") if isinstance(p, str) else p
    out: dict[str, Any] = {"case": case.index, "mutations": case.desc, "size": len(body),
                           "replay": f"scripts/fuzz.py --seed {seed} --replay {case.decoder}:{case.index}"}
    if case.decoder == "native":
        arg = "json.loads({!r})" if case.payload[0] == "python" else "orjson.loads({!r})"
    elif case.decoder == "folded" and isinstance(case.payload[0], str):
        arg = "{!r}.decode('utf-8', 'surrogatepass')"
    elif case.decoder == "folded":
        arg = "{!r}.decode()"
    else:
        arg = "{!r}"
    if len(body) <= INLINE_BYTES:
        out["python"] = dec.call.format(body=arg.format(body), rate=repr(rate))
    else:
        out["python"] = None
        out["body_head"] = repr(body[:300])
    if len(body) <= 65536:
        out["body_b64"] = base64.b64encode(body).decode()
    return out


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Stats:
    cases: int = 0
    clean: int = 0
    refused: int = 0
    crashes: int = 0
    items: int = 0
    poison: int = 0
    lost: int = 0
    slow: int = 0
    seconds: float = 0.0


def case_rng(seed: int, decoder: str, index: int) -> random.Random:
    return random.Random(f"{seed}:{decoder}:{index}")


def make_case(seed: int, dec: Decoder, index: int) -> Case:
    _RAW.clear()
    payload, desc = dec.generate(case_rng(seed, dec.name, index))
    return Case(dec.name, index, payload, desc)


def check_sinks(dec: Decoder, pairs: list[tuple[Case, Any]], tmp: Path, chunk: int, findings: Findings,
                stats: Stats) -> None:
    """Every accepted item through every sink; on a batch failure, each item alone to find the poison.

    An item that a sink takes without raising but that is missing afterwards (not counted in the
    exposition, no row in the store) is **lost**.
    """
    if not pairs:
        return
    stats.items += len(pairs)
    poisoned: set[int] = set()
    lost: set[int] = set()
    items = [it for _, it in pairs]

    def record(i: int, case: Case, e: BaseException, sink: str) -> None:
        if isinstance(e, Lost):
            lost.add(i)
            findings.add("lost", dec.name, case, e, sink=sink)
        else:
            poisoned.add(i)
            findings.add("poison", dec.name, case, e, sink=sink)

    try:
        metrics_sink(items, dec.fmt)
    except Exception:  # noqa: BLE001 - a fuzzer classifies every exception
        for i, (case, it) in enumerate(pairs):
            try:
                metrics_sink([it], dec.fmt)
            except Exception as e:  # noqa: BLE001 - a fuzzer classifies every exception
                record(i, case, e, "metrics")
    sink = StoreSink(tmp / f"{dec.name}-{chunk}.db")
    store_poison: set[int] = set()
    try:
        try:
            sink.write(items)
        except Exception:  # noqa: BLE001 - a fuzzer classifies every exception
            for i, (case, it) in enumerate(pairs):
                try:
                    sink.write([it])
                except Exception as e:  # noqa: BLE001 - a fuzzer classifies every exception
                    store_poison.add(i)
                    record(i, case, e, "runstore")
        keys = sink.span_keys()
        for i, (case, it) in enumerate(pairs):
            if i not in store_poison and isinstance(it, Span) and (it.correlation_id, it.span_id) not in keys:
                record(i, case, Lost(f"no spans row for ({short(it.correlation_id)}, {short(it.span_id)})"),
                       "runstore")
        want = sum(1 for i, it in enumerate(items) if isinstance(it, Profile) and i not in store_poison)
        if sink.profile_count() != want:
            for i, (case, it) in enumerate(pairs):
                if isinstance(it, Profile) and i not in store_poison:
                    alone = StoreSink()
                    try:
                        alone.write([it])
                        if alone.profile_count() != 1:
                            record(i, case, Lost("no profiles row"), "runstore")
                    except Exception as e:  # noqa: BLE001 - a fuzzer classifies every exception
                        record(i, case, e, "runstore")
                    finally:
                        alone.close()
    finally:
        sink.close()
    stats.poison += len(poisoned)
    stats.lost += len(lost - poisoned)


GUARD_ALL = False  # --guard-all: fork-guard every decoder, not only pstats
HANG_S = 60.0  # a child that decodes nothing for this long is killed, and its case reported as a hang


def guard(dec: Decoder, cases: list[Case]) -> dict[int, str]:
    """Decode ``cases`` in a forked child first: {position: signal name} of those that kill the process.

    ``marshal.loads`` (pstats) is not safe against crafted data and can take the
    interpreter down, and so could any C extension; a dead child is a finding,
    and the case is then skipped in-process so the run goes on.
    """
    fatal: dict[int, str] = {}
    start = 0
    while start < len(cases):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(r)
            try:
                for k in range(start, len(cases)):
                    os.write(w, k.to_bytes(4, "little"))
                    try:
                        dec.decode(cases[k].payload)
                    except BaseException:  # noqa: BLE001 - the parent classifies; the child only has to live
                        pass
            finally:
                os._exit(0)
        os.close(w)
        last, buf, hung = None, b"", False
        with os.fdopen(r, "rb", buffering=0) as pipe:
            while True:
                ready, _, _ = io_select.select([pipe], [], [], HANG_S)
                if not ready:
                    hung = True
                    os.kill(pid, signal.SIGKILL)
                    break
                data = pipe.read(4096)
                if not data:
                    break
                buf += data
                last = int.from_bytes(buf[-4:], "little")
        _, status = os.waitpid(pid, 0)
        if hung:
            fatal[last] = "hang"
        elif os.WIFSIGNALED(status):
            fatal[last] = signal.Signals(os.WTERMSIG(status)).name
        elif os.WEXITSTATUS(status) != 0:
            fatal[last] = f"exit {os.WEXITSTATUS(status)}"
        else:
            break
        start = (last if last is not None else start) + 1
    return fatal


def run_decoder(dec: Decoder, n: int, seed: int, chunk: int, tmp: Path, findings: Findings,
                progress: bool) -> Stats:
    stats = Stats()
    t_start = time.perf_counter()
    for lo in range(0, n, chunk):
        cases = []
        for i in range(lo, min(n, lo + chunk)):
            try:
                cases.append(make_case(seed, dec, i))
            except (MemoryError, RecursionError):  # the generator overshot a limit: not the decoder's doing
                print(f"  {dec.name}: case {i} skipped (generator ran out of memory)", file=sys.stderr)
        fatal = guard(dec, cases) if (dec.guard or GUARD_ALL) else {}
        pairs: list[tuple[Case, Any]] = []
        for k, case in enumerate(cases):
            stats.cases += 1
            if k in fatal:
                stats.crashes += 1
                findings.add("crash", dec.name, case, None, note=f"process killed: {fatal[k]}")
                continue
            t0 = time.perf_counter()
            try:
                items = dec.decode(case.payload)
            except dec.refused:
                stats.refused += 1
            except Exception as e:  # noqa: BLE001 - a fuzzer classifies every exception
                stats.crashes += 1
                findings.add("crash", dec.name, case, e)
            else:
                stats.clean += 1
                pairs.extend((case, it) for it in items)
            dt = time.perf_counter() - t0
            if dt > SLOW_S:
                stats.slow += 1
                findings.add("slow", dec.name, case, None, note=f"decode took {dt:.1f}s")
        check_sinks(dec, pairs, tmp, lo // chunk, findings, stats)
        if progress:
            el = time.perf_counter() - t_start
            print(f"  {dec.name}: {stats.cases}/{n} cases, {stats.crashes} crashes, {stats.poison} poison, "
                  f"{stats.cases / el:.0f}/s", file=sys.stderr, flush=True)
    stats.seconds = time.perf_counter() - t_start
    return stats


def table(results: dict[str, Stats]) -> str:
    head = f"{'decoder':<14} {'cases':>8} {'clean':>8} {'refused':>8} {'crashes':>8} {'poison':>7} " \
           f"{'lost':>6} {'items':>8} {'slow':>5} {'cases/s':>8}"
    rows = [head, "-" * len(head)]
    for name, s in results.items():
        rows.append(f"{name:<14} {s.cases:>8} {s.clean:>8} {s.refused:>8} {s.crashes:>8} {s.poison:>7} "
                    f"{s.lost:>6} {s.items:>8} {s.slow:>5} {s.cases / max(s.seconds, 1e-9):>8.0f}")
    return "\n".join(rows)


def findings_doc(results: dict[str, Stats], findings: Findings, seed: int) -> dict:
    doc: dict[str, Any] = {"seed": seed, "decoders": {}}
    for name, s in results.items():
        dec = DECODERS[name]
        out = []
        per_kind: dict[str, int] = {}
        for f in findings.for_decoder(name):
            per_kind[f.kind] = per_kind.get(f.kind, 0) + 1
            if per_kind[f.kind] > MAX_FINDINGS:
                continue
            out.append({"kind": f.kind, "sink": f.sink, "exception": f.exc_type, "message": f.message,
                        "where": f.location, "count": f.count, "reproducer": reproducer(f.best, seed, dec)})
        doc["decoders"][name] = {"stats": s.__dict__, "findings": out,
                                 "distinct_signatures": per_kind}
    return doc


def markdown(results: dict[str, Stats], findings: Findings, seed: int, argv: list[str]) -> str:
    lines = ["# Fuzz findings (scripts/fuzz.py)", "", f"Command: `{' '.join(argv)}` (seed {seed})", "", "```",
             table(results), "```", ""]
    for name in results:
        fs = findings.for_decoder(name)
        if not fs:
            continue
        lines.append(f"## {name}")
        lines.append("")
        for f in fs[:40]:
            rep = reproducer(f.best, seed, DECODERS[name])
            sink = f" in sink **{f.sink}**" if f.sink else ""
            lines.append(f"- **{f.kind}**{sink} ×{f.count}: `{f.exc_type}: {f.message[:160]}` at `{f.location}`")
            lines.append(f"  - input: {'; '.join(f.best.desc)[:300]}")
            if rep.get("python") and len(rep["python"]) <= 400:
                lines.append(f"  - `{rep['python']}`")
            lines.append(f"  - `{rep['replay']}`")
        lines.append("")
    return "\n".join(lines)


def store_one(item) -> None:
    """Write ``item`` (or a list of items) to a fresh run store."""
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-replay-"))
    sink = StoreSink(tmp / "r.db")
    try:
        sink.write(item if isinstance(item, list) else [item])
    finally:
        sink.close()
        shutil.rmtree(tmp, ignore_errors=True)


def replay(spec: str, seed: int) -> int:
    name, _, idx = spec.partition(":")
    dec = DECODERS[name]
    case = make_case(seed, dec, int(idx))
    print(f"{name} case {case.index}: {'; '.join(case.desc)} ({case.size()} bytes)")
    t0 = time.perf_counter()
    try:
        items = dec.decode(case.payload)
    except dec.refused as e:
        print(f"refused: {type(e).__name__}: {str(e)[:500]}")
        return 0
    except Exception:  # noqa: BLE001 - any other exception is the finding being replayed
        traceback.print_exc()
        return 1
    print(f"decoded: {len(items)} items in {time.perf_counter() - t0:.2f}s")
    try:
        metrics_sink(items, dec.fmt)
        store_one(items)
        print("every sink took them")
        return 0
    except Exception as e:  # noqa: BLE001 - a sink failing on an accepted item is the finding: find which
        print(f"a sink failed on the batch ({type(e).__name__}: {str(e)[:200]}); trying each item alone")
    rc = 0
    for i, it in enumerate(items):
        for sname, check in (("metrics", lambda x: metrics_sink([x], dec.fmt)), ("runstore", store_one)):
            try:
                check(it)
            except Exception:  # noqa: BLE001 - a sink failing on an accepted item is the finding
                print(f"item {i} poisons {sname}:")
                traceback.print_exc()
                rc = 1
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000, help="cases per decoder (default 100000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoders", default=",".join(DECODERS), help=f"comma-separated subset of {','.join(DECODERS)}")
    p.add_argument("--chunk", type=int, default=500, help="cases per fresh store (default 500)")
    p.add_argument("--out", default="/tmp/fuzz_findings.json", help="reproducers as JSON")
    p.add_argument("--md", default=None, help="also write the findings as Markdown here")
    p.add_argument("--replay", metavar="DECODER:INDEX", help="rerun one case and show its traceback")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--guard-all", action="store_true",
                   help="decode every chunk in a forked child first, for every decoder (pstats always is): "
                        "a case that kills the process is then a finding, not the end of the run")
    p.add_argument("--max-memory-mb", type=int, default=4096,
                   help="address-space limit (RLIMIT_AS) so a hostile case raises MemoryError instead of "
                        "taking the machine's memory (default 4096; 0 = none)")
    args = p.parse_args(argv)
    if args.max_memory_mb:
        limit = args.max_memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000))
    global GUARD_ALL
    GUARD_ALL = args.guard_all
    if args.replay:
        return replay(args.replay, args.seed)
    names = [n.strip() for n in args.decoders.split(",") if n.strip()]
    unknown = [n for n in names if n not in DECODERS]
    if unknown:
        p.error(f"unknown decoder(s) {unknown}; choose from {list(DECODERS)}")
    findings = Findings()
    results: dict[str, Stats] = {}
    tmp = Path(tempfile.mkdtemp(prefix="flowscope-fuzz-"))
    try:
        for name in names:
            results[name] = run_decoder(DECODERS[name], args.cases, args.seed, args.chunk, tmp, findings,
                                        not args.quiet)
            Path(args.out).write_bytes(orjson.dumps(findings_doc(results, findings, args.seed),
                                                    option=orjson.OPT_INDENT_2))
            if args.md:
                Path(args.md).write_text(markdown(results, findings, args.seed, ["scripts/fuzz.py", *sys.argv[1:]]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(results))
    print(f"\nreproducers: {args.out}" + (f"; summary: {args.md}" if args.md else ""))
    bad = sum(s.crashes + s.poison for s in results.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Query-string helpers shared by the backend's read APIs: times, bounded numbers, the run store."""

from __future__ import annotations

from datetime import datetime

import orjson
from flask import Response, current_app, request

from exporter.http import HttpError
from exporter.runstore import RunStore


MAX_TIME_S = 253402300799  # 9999-12-31T23:59:59Z


def parse_time(value: str, field: str) -> int:
    """RFC 3339 or Unix seconds → ns since the epoch; 400 naming the field otherwise."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            seconds = float("nan")
    if not 0 <= seconds <= MAX_TIME_S:  # NaN fails this too
        raise HttpError(400, "invalid_query", f"{field} must be RFC 3339 or Unix seconds (0 .. year 9999), "
                        f"got {value[:40]!r}", field)
    return int(seconds * 1e9)


def number_arg(name: str, default, lo, hi, kind=int):
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = kind(raw)
    except ValueError:
        raise HttpError(400, "invalid_query", f"{name} must be a number, got {raw[:40]!r}", name) from None
    if not lo <= v <= hi:
        raise HttpError(400, "invalid_query", f"{name} must be between {lo} and {hi}, got {v}", name)
    return v


def run_store() -> RunStore:
    store = current_app.extensions["flowscope"].runs
    if store is None:
        raise HttpError(404, "run_store_disabled", "the run store is off (FLOWSCOPE_RUN_STORE=false)")
    return store


def json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")

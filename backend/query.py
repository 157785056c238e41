"""Query-string helpers shared by the backend's read APIs: times, bounded numbers, the run store."""

from __future__ import annotations

from datetime import datetime

from flask import current_app, request

from exporter.http import HttpError
from exporter.runstore import RunStore


def parse_time(value: str, field: str) -> int:
    """RFC 3339 or Unix seconds → ns since the epoch; 400 naming the field otherwise."""
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        raise HttpError(400, "invalid_query", f"{field} must be RFC 3339 or Unix seconds, got {value[:40]!r}",
                        field) from None


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

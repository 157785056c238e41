"""Query-string helpers shared by the backend's read APIs: times, bounded numbers, text, bodies, JSON out.

Every query parameter a backend view reads goes through one of these, so a bad value is a 400 naming
the field, never a 500 further down (an int64 overflow in the database, ``int("²")``, a NUL byte that
PostgreSQL refuses):

    since = parse_time(request.args["since"], "since")      # ns since the epoch, 1970 .. 2262-04-11
    since = parse_datetime(request.args["since"], "since")  # for a DateTime column: 1970 .. 9999
    starts = parse_alert_time(alert["startsAt"], "startsAt")   # a webhook's time: aware datetime, or None
    limit = number_arg("limit", 100, 1, 1000)               # ASCII digits only
    body = read_body(64 * 1024)                             # 413 over the cap, as ingest does
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from flask import Response, request

from exporter.validate import MAX_TIME_NS  # what a BIGINT of nanoseconds holds: the ingest limit too
from exporter.web import HttpError, read_body  # noqa: F401 - re-exported: the capped, gzip-aware reader ingest uses

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME_S = MAX_TIME_NS // 10**9  # 2262-04-11T23:47:16Z
MAX_DATETIME_S = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime holds
# ASCII only: str.isdigit() accepts "²" (int() does not) and int()/float() accept "١٢" and "1_0"
_INT = re.compile(r"-?[0-9]{1,30}")
_FLOAT = re.compile(r"[-+]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][-+]?[0-9]{1,4})?")
_FRACTION = re.compile(r"(\.[0-9]{6})[0-9]+")  # Go and Alertmanager send nanoseconds; datetime holds microseconds
_ZONE = re.compile(r"([zZ]|[+-][0-9]{2}:?[0-9]{2})$")


def is_int(raw: str) -> bool:
    """Is ``raw`` a whole number in ASCII digits (an optional leading ``-``)? Use before ``int(raw)``."""
    return _INT.fullmatch(raw) is not None


def parse_rfc3339(value: str) -> datetime | None:
    """An aware datetime from RFC 3339 (up to nanoseconds; naive means UTC); None if it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        dt = datetime.fromisoformat(_FRACTION.sub(r"\1", value.replace("Z", "+00:00").replace("z", "+00:00")))
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def datetime_ns(dt: datetime) -> int:
    """Nanoseconds since the epoch, exactly (no float rounding), for any aware datetime."""
    return (dt - EPOCH) // timedelta(microseconds=1) * 1000


def ns_datetime(ns: int) -> datetime:
    """The UTC datetime of ``ns`` (microsecond precision); ``ns`` within 0 .. MAX_TIME_NS."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def iso_ns(ns: int) -> str:
    """``2024-05-01T12:00:00.000Z`` for ns since the epoch; any int (clamped to years 1 .. 9999)."""
    try:
        dt = ns_datetime(ns)
    except OverflowError:
        dt = datetime.max.replace(tzinfo=UTC) if ns > 0 else datetime.min.replace(tzinfo=UTC)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instant(value: str, field: str, latest_s: int) -> tuple[float | None, datetime | None]:
    """(Unix seconds, None) or (None, aware datetime), within 1970 .. ``latest_s``; 400 naming the field otherwise."""
    if _FLOAT.fullmatch(value):
        seconds = float(value)
        if 0 <= seconds <= latest_s:
            return seconds, None
    else:
        dt = parse_rfc3339(value)
        # compare in UTC seconds: 9999-12-31T23:59:59-14:00 is past datetime.max once converted
        if dt is not None and 0 <= (dt - EPOCH).total_seconds() <= latest_s:
            return None, dt
    latest = iso_ns(latest_s * 10**9)[:19] + "Z"
    raise HttpError(400, "invalid_query", f"{field} must be RFC 3339 or Unix seconds from 1970 to {latest}, "
                    f"got {value[:40]!r}", field)


def parse_time(value: str, field: str) -> int:
    """RFC 3339 or Unix seconds → ns since the epoch, up to 2262-04-11 (ns in 64 bits); 400 naming the field."""
    seconds, dt = _instant(value, field, MAX_TIME_S)
    return min(int(seconds * 1e9) if dt is None else datetime_ns(dt), MAX_TIME_NS)


def parse_datetime(value: str, field: str) -> datetime:
    """RFC 3339 or Unix seconds → an aware UTC datetime, 1970 .. 9999; 400 naming the field otherwise."""
    seconds, dt = _instant(value, field, MAX_DATETIME_S)
    return EPOCH + timedelta(seconds=seconds) if dt is None else dt.astimezone(UTC)


def parse_alert_time(value: Any, field: str) -> datetime | None:
    """A time in an Alertmanager payload → an aware UTC datetime; Go's zero time (``0001-01-01...``) → None.

    RFC 3339 as Go writes it (up to nanoseconds), with its zone; anything else is a 400 ``invalid_payload``
    naming the field. A valid time past what a datetime holds in UTC (``9999-12-31T23:59:59-14:00``) is
    clamped to ``datetime.max``: Alertmanager does not retry a 4xx, so refusing it would lose the notification.
    (Query parameters use :func:`parse_time`, ns since the epoch, or :func:`parse_datetime`.)
    """
    if not isinstance(value, str):
        raise HttpError(400, "invalid_payload", f"{field} must be an RFC 3339 string", field)
    if value.startswith("0001-01-01"):
        return None
    dt = parse_rfc3339(value)
    if dt is None:
        raise HttpError(400, "invalid_payload", f"{field} is not RFC 3339: {value[:40]!r}", field)
    if not _ZONE.search(value):
        raise HttpError(400, "invalid_payload", f"{field} needs a timezone", field)
    try:
        return dt.astimezone(UTC)
    except OverflowError:
        return (datetime.max if dt.year > 1 else datetime.min).replace(tzinfo=UTC)


def number_arg(name: str, default, lo, hi, kind=int):
    """A query parameter as an int (ASCII digits) or float (ASCII decimal), within ``lo .. hi``; 400 otherwise."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    pattern, what = (_INT, "a whole number") if kind is int else (_FLOAT, "a number")
    if not pattern.fullmatch(raw):
        raise HttpError(400, "invalid_query", f"{name} must be {what}, got {raw[:40]!r}", name)
    v = kind(raw)
    if not lo <= v <= hi:
        raise HttpError(400, "invalid_query", f"{name} must be between {lo} and {hi}, got {raw[:40]}", name)
    return v


def check_text(value: str, field: str, max_len: int = 1000) -> str:
    """A text parameter the stores can compare: no NUL (PostgreSQL refuses it), at most ``max_len`` characters."""
    if "\x00" in value or len(value) > max_len:
        raise HttpError(400, "invalid_query", f"{field} must be at most {max_len} characters, without NUL", field)
    return value


def json_response(body, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")

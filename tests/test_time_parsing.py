"""Time parameters: one ``parse_time`` (ns since the epoch) for every read API, its siblings named by what
they return."""

import ast
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backend.query import parse_alert_time, parse_datetime, parse_time
from exporter.web import HttpError

ROOT = Path(__file__).resolve().parent.parent


def test_there_is_one_parse_time_and_it_returns_nanoseconds():
    defs = [str(p.relative_to(ROOT)) for top in ("backend", "exporter") for p in sorted((ROOT / top).rglob("*.py"))
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef) and node.name == "parse_time"]
    assert defs == ["backend/query.py"]
    assert parse_time("2026-11-23T10:00:00Z", "since") == 1795428000 * 10**9
    assert parse_time("1795428000.5", "since") == 1795428000_500_000_000


def test_siblings_return_datetimes_and_say_which_field_was_wrong():
    assert parse_datetime("1795428000", "since") == datetime(2026, 11, 23, 10, tzinfo=UTC)
    assert parse_alert_time("2026-11-23T11:00:00.123456789+01:00", "startsAt") == datetime(2026, 11, 23, 10, 0, 0,
                                                                                           123456, tzinfo=UTC)
    assert parse_alert_time("0001-01-01T00:00:00Z", "endsAt") is None  # Go's zero time: not set
    for fn, bad, field in ((parse_time, "yesterday", "since"), (parse_alert_time, "2026-11-23T10:00:00", "endsAt"),
                           (parse_alert_time, 17, "startsAt")):
        with pytest.raises(HttpError) as e:
            fn(bad, field)
        assert e.value.status == 400 and e.value.field == field

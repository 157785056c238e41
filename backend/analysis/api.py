"""Error groups, resolutions and root-cause attribution over HTTP.

- ``GET /api/v1/errors``: groups seen in ``since`` (default the last 24 h), optionally for one
  ``workflow``: count, first/last seen, trend (new, spiking, steady), status (open, resolved,
  regressed), layers, workflows, sample correlation_ids and suggestions.
- ``GET /api/v1/errors/<fingerprint>``: one group, its latest occurrences and resolution history.
- ``POST /api/v1/errors/<fingerprint>/resolve`` ``{"note": "...", "resolved_by": "..."}``: remember
  what fixed it. When the fingerprint comes back, the group is flagged ``regressed`` and this note is
  the first suggestion.
- ``GET /api/v1/attribution?workflow=W&by=failed|slow``: BubbleUp-style ranking of the values that
  are over-represented among the bad runs.
"""

from __future__ import annotations

import time

import orjson
from flask import Blueprint, current_app, request

from exporter import conventions as c
from exporter.http import HttpError

from ..admin import require_admin
from ..query import check_text, json_response, number_arg, parse_time, read_body, run_store
from .attribution import attribute
from .groups import status_of, suggestions
from .trend import trend

MAX_NOTE = 4000
MAX_RESOLVE_BODY = 64 * 1024  # a 4,000-character note, every character \u-escaped, fits with room to spare


def create_blueprint() -> Blueprint:
    bp = Blueprint("errors", __name__)

    @bp.get(c.ERRORS_PATH)
    def list_groups():
        now = time.time_ns()
        a = request.args
        since = parse_time(a["since"], "since") if a.get("since") else now - 86400 * 10**9
        if since >= now:
            raise HttpError(400, "invalid_query", "since must be in the past", "since")
        recent_s = number_arg("recent_s", 3600, 60, 30 * 86400, float)
        limit = number_arg("limit", 100, 1, 1000)
        store = run_store()
        workflow = check_text(a["workflow"], "workflow") if a.get("workflow") else None
        groups = store.error_groups(since, workflow, limit)
        out = []
        for g in groups:
            times = g.pop("times")
            tr = trend(times, g["first_seen_ns"], now, recent_s=recent_s, window_s=(now - since) / 1e9)
            status = status_of(g)
            hist = store.resolutions(g["fingerprint"]) if g.get("resolved_at_ns") else []
            out.append({**g, "count": len(times), "total_count": g["count"], **tr, "status": status,
                        "suggestions": suggestions(g, hist)})
        return json_response({"groups": out, "since_ns": since, "recent_s": recent_s})

    @bp.get(c.ERRORS_PATH + "/<fingerprint>")
    def get_group(fingerprint: str):
        check_text(fingerprint, "fingerprint", 64)
        g = run_store().error_group(fingerprint)
        if g is None:
            raise HttpError(404, "fingerprint_not_found", f"no error group with fingerprint {fingerprint!r}",
                            "fingerprint")
        g["status"] = status_of(g)
        g["suggestions"] = suggestions(g, g["resolutions"])
        return json_response(g)

    @bp.post(c.ERRORS_PATH + "/<fingerprint>/resolve")
    def resolve(fingerprint: str):
        require_admin(current_app.extensions["flowscope"].config, "resolving an error group")
        check_text(fingerprint, "fingerprint", 64)
        try:
            body = orjson.loads(read_body(MAX_RESOLVE_BODY) or b"null")
        except orjson.JSONDecodeError as e:
            raise HttpError(400, "malformed_json", f"body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "invalid_body", 'expected {"note": "...", "resolved_by": "..."}')
        note = body.get("note")
        if not isinstance(note, str) or not note.strip():
            raise HttpError(400, "invalid_body", "note is required: what fixed it", "note")
        if len(note) > MAX_NOTE:
            raise HttpError(400, "invalid_body", f"note is longer than {MAX_NOTE} characters", "note")
        by = body.get("resolved_by")
        if by is not None and (not isinstance(by, str) or len(by) > 200):
            raise HttpError(400, "invalid_body", "resolved_by must be a string of at most 200 characters",
                            "resolved_by")
        store = run_store()
        if not store.resolve(fingerprint, note.strip(), by, time.time_ns()):
            raise HttpError(404, "fingerprint_not_found", f"no error group with fingerprint {fingerprint!r}",
                            "fingerprint")
        g = store.error_group(fingerprint)
        g["status"] = status_of(g)
        return json_response(g)

    @bp.get(c.ATTRIBUTION_PATH)
    def attribution():
        a = request.args
        wf = a.get("workflow")
        if not wf:
            raise HttpError(400, "invalid_query", "workflow is required", "workflow")
        check_text(wf, "workflow")
        by = a.get("by", "failed")
        if by not in ("failed", "slow"):
            raise HttpError(400, "invalid_query", "by must be failed or slow", "by")
        now = time.time_ns()
        until = parse_time(a["until"], "until") if a.get("until") else now
        since = parse_time(a["since"], "since") if a.get("since") else until - 86400 * 10**9
        if since >= until:
            raise HttpError(400, "invalid_query", "since must be before until", "since")
        runs, spans = run_store().attribution_rows(wf, since, until, number_arg("max_runs", 5000, 10, 50_000))
        result = attribute(runs, spans, by=by, q=number_arg("q", 0.05, 1e-6, 0.5, float),
                           top=number_arg("top", 20, 1, 200))
        result["workflow"] = wf
        public = current_app.extensions["flowscope"].config.public_url.rstrip("/")
        for f in result["findings"]:
            f["sample_pages"] = [f"{public}{c.RUN_PAGE_PATH}/{cid}" for cid in f["sample_runs"]]
        return json_response(result)

    return bp

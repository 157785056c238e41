"""The endpoint inventory over HTTP, and its page.

- ``POST /api/v1/endpoints``: register a service's inventory (:mod:`.service` says the body); authenticated like
  ingest (``Authorization: Bearer <FLOWSCOPE_INGEST_TOKEN>`` when that is set); 400 naming the field.
- ``GET /api/v1/endpoints?since=&until=&service=``: the inventory joined with the server spans of the window
  (default: the last 24 hours): calls, error ratio, p95, workflows and last call per endpoint; the endpoints never
  called; the routes called that no inventory lists.
- ``GET /endpoints``: the same as a page, the gaps highlighted.
"""

from __future__ import annotations

import time

import orjson
from flask import Blueprint, Response, render_template, request

from exporter import conventions as c
from exporter.web import HttpError, bearer_ok

from ..ext import current_flowscope, run_store
from ..query import check_text, json_response, parse_time, read_body
from . import service

bp = Blueprint("endpoints", __name__, template_folder="templates")

DEFAULT_WINDOW_NS = 24 * 3600 * 10**9


def _window() -> tuple[int, int, str | None]:
    a = request.args
    now = time.time_ns()
    until = parse_time(a["until"], "until") if a.get("until") else now
    since = parse_time(a["since"], "since") if a.get("since") else max(0, until - DEFAULT_WINDOW_NS)
    if since > until:
        raise HttpError(400, "invalid_query", "since must not be after until", "since")
    svc = check_text(a["service"], "service", 200) if a.get("service") else None
    return since, until, svc


@bp.post(c.ENDPOINTS_PATH)
def register() -> Response:
    cfg = current_flowscope().config
    if cfg.ingest_token and not bearer_ok(cfg.ingest_token):
        raise HttpError(401, "unauthorized", "registering endpoints requires Authorization: Bearer "
                        "<FLOWSCOPE_INGEST_TOKEN>", headers={"WWW-Authenticate": 'Bearer realm="flowscope"'})
    if (request.mimetype or "").lower() != "application/json":
        raise HttpError(415, "unsupported_media_type", "send application/json", "Content-Type")
    raw = read_body(cfg.max_body_bytes)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise HttpError(400, "malformed_body", f"body is not valid JSON: {e}") from None
    reg = service.parse_registration(body)
    result = run_store().register_endpoints(reg.service, reg.entries, time.time_ns(), replace=reg.replace)
    return json_response({"service": reg.service, "endpoints": len(reg.entries), "added": result.added,
                          "kept": result.kept, "removed": result.removed})


@bp.get(c.ENDPOINTS_PATH)
def list_endpoints() -> Response:
    since, until, svc = _window()
    return json_response(service.report_json(run_store().endpoint_report(since, until, svc)))


@bp.get(c.ENDPOINTS_PAGE_PATH)
def endpoints_page() -> str | tuple[str, int]:
    try:
        since, until, svc = _window()
        body = service.report_json(run_store().endpoint_report(since, until, svc))
    except HttpError as e:
        return render_template("endpoints.html", error=e.message, report=None, args=request.args), e.status
    return render_template("endpoints.html", error=None, report=body, args=request.args)

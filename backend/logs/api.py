"""Search the stored application log lines over HTTP, and the logs page.

- ``GET /api/v1/logs``: ``q`` (the search language of :mod:`.query`: ``level:error service:checkout "card
  declined" -healthcheck``), and as parameters ``since``/``until`` (RFC 3339 or Unix seconds), ``level`` (that
  or more severe), ``service``, ``workflow``, ``correlation_id``, ``trace_id``; newest first, ``limit`` lines a
  page, ``cursor`` (the ``next_cursor`` of the page before) for the next. ``templates=true``: the newest
  ``scan`` matching lines collapsed into their templates with counts instead.
- ``GET /logs``: the same search as a page.

Paging is by cursor, not offset: a line's id is its time, so the next page is a key range below the last id,
as fast at the millionth line as at the first, and lines arriving meanwhile neither shift nor repeat a page.
A query that cannot be parsed is a 400 whose ``error.position`` points at the character.
"""

from __future__ import annotations

from urllib.parse import quote_plus

from flask import Blueprint, Response, render_template, request

from exporter import conventions as c
from exporter.web import HttpError

from ..ext import current_flowscope, run_store
from ..query import check_text, is_int, json_response, number_arg, parse_time
from . import service
from .query import QueryError
from .service import LogFilters

bp = Blueprint("logs", __name__, template_folder="templates")

#: Where a cursor must lie: a line's id is its time in ns, which fits in a signed 64-bit integer.
MAX_CURSOR = 2**63 - 1


def _filters() -> LogFilters:
    a = request.args
    level = a.get("level") or None
    if level is not None and level not in c.LOG_LEVELS:
        raise HttpError(400, "invalid_query", f"level must be one of {', '.join(c.LOG_LEVELS)}", "level")
    since = parse_time(a["since"], "since") if a.get("since") else None
    until = parse_time(a["until"], "until") if a.get("until") else None
    if since is not None and until is not None and since > until:
        raise HttpError(400, "invalid_query", "since must not be after until", "since")

    def text(name: str, max_len: int) -> str | None:
        return check_text(a[name], name, max_len) if a.get(name) else None

    return LogFilters(since_ns=since, until_ns=until, level=level, service=text("service", 200),
                      workflow=text("workflow", 200), correlation_id=text("correlation_id", 128),
                      trace_id=text("trace_id", 32))


def _cursor() -> int | None:
    raw = request.args.get("cursor")
    if not raw:
        return None
    if not is_int(raw) or not 0 <= int(raw) <= MAX_CURSOR:
        raise HttpError(400, "invalid_query", "cursor must be a page's next_cursor (digits)", "cursor")
    return int(raw)


def _query_error(e: QueryError) -> Response:
    return json_response({"error": {"code": "invalid_query", "message": f"q: {e}", "field": "q",
                                    "position": e.position}}, 400)


def _field_error(e: ValueError) -> HttpError:
    """A field compared in a way it cannot be (the parser refuses these first; this is the store's own word)."""
    return HttpError(400, "invalid_query", f"q: {e}", "q")


@bp.get(c.LOGS_PATH)
def search_logs() -> Response:
    q_text = request.args.get("q", "")
    try:
        q = service.request_query(q_text, _filters())
    except QueryError as e:
        return _query_error(e)
    public = current_flowscope().config.public_url
    if request.args.get("templates", "false") not in ("true", "false", "1", "0"):
        raise HttpError(400, "invalid_query", "templates must be true or false", "templates")
    try:
        if request.args.get("templates") in ("true", "1"):
            body = service.templates(run_store(), q, public, scan=number_arg("scan", 2000, 1, 50_000),
                                     top=number_arg("top", 50, 1, 1000))
        else:
            body = service.search(run_store(), q, public, limit=number_arg("limit", 100, 1, 1000),
                                  cursor=_cursor())
    except ValueError as e:
        raise _field_error(e) from e
    return json_response(body)


@bp.get(c.LOGS_PAGE_PATH)
def logs_page() -> str | tuple[str, int]:
    q_text = request.args.get("q", "")
    collapse = request.args.get("templates") in ("true", "1")
    model = {"q": q_text, "templates": collapse, "lines": [], "groups": [], "next_link": None, "scanned": 0}
    try:
        q = service.request_query(q_text, _filters())
        public = current_flowscope().config.public_url
        if collapse:
            got = service.templates(run_store(), q, public, scan=2000, top=100)
            model.update(groups=got["templates"], scanned=got["scanned"])
        else:
            got = service.search(run_store(), q, public, limit=number_arg("limit", 100, 1, 1000), cursor=_cursor())
            model["lines"] = got["lines"]
            if got["next_cursor"]:
                args = {k: v for k, v in request.args.items() if k != "cursor"}
                args["cursor"] = got["next_cursor"]
                model["next_link"] = c.LOGS_PAGE_PATH + "?" + "&".join(
                    f"{k}={quote_plus(v)}" for k, v in args.items())
    except QueryError as e:
        return render_template("logs.html", error=f"q: {e}", error_position=e.position, **model), 400
    except ValueError as e:
        return render_template("logs.html", error=_field_error(e).message, error_position=None, **model), 400
    except HttpError as e:
        return render_template("logs.html", error=e.message, error_position=None, **model), e.status
    return render_template("logs.html", error=None, error_position=None, **model)

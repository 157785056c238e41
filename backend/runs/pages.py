"""Where a person starts: the home page (``/``) and the runs list (``/runs``), rendered on the server.

The home page answers "what is slow or failing right now": every workflow seen in the window with its rate,
error ratio and p95, the newest failed runs, the slowest runs and the open error groups. The runs list is
the same store behind filters a person types (workflow, status, window, minimum duration, text in the
error, one attribute) and pages of 50, each row linking to its run page. Both read the run store only.

A bad filter is shown on the page with a 400, not as JSON: these are pages.
"""

from __future__ import annotations

import time

from flask import Blueprint, render_template, request

from exporter import conventions as c
from exporter.web import HttpError

from ..ext import current_flowscope, run_store
from ..query import check_text, number_arg
from . import overview
from .overview import RUN_STATUSES

bp = Blueprint("pages", __name__, template_folder="templates")


def _outcome_keys() -> tuple[str, ...]:
    cfg = current_flowscope().config
    return tuple(getattr(cfg, "attribution_outcome_keys", c.ATTRIBUTION_OUTCOME_KEYS))


@bp.get("/")
def home():
    window = request.args.get("window", "1h")
    now = time.time_ns()
    try:
        since = overview.window_start(window, now)
    except HttpError as e:
        return render_template("home.html", error=e.message, **overview.empty_home()), 400
    return render_template("home.html", error=None, **overview.home(run_store(), window, since, now))


@bp.get(c.RUN_PAGE_PATH)
def runs():
    a = request.args
    f = {k: a.get(k, "") for k in ("workflow", "status", "window", "min_duration_ms", "q", "attr")}
    f["window"] = f["window"] or "24h"
    try:
        since = overview.window_start(f["window"], time.time_ns())
        status = f["status"] or None
        if status is not None and status not in RUN_STATUSES:
            raise HttpError(400, "invalid_query", f"status must be one of {', '.join(RUN_STATUSES)}", "status")
        attribute = None
        if f["attr"]:
            key, sep, value = check_text(f["attr"], "attr", 500).partition("=")
            if not sep or not key:
                raise HttpError(400, "invalid_query", "attr must be key=value, e.g. http.route=/checkout", "attr")
            attribute = (key.strip(), value.strip())
        page = number_arg("page", 1, 1, 10_000)
        store = run_store()
        model = overview.runs_page(
            store, f, page, workflow=check_text(f["workflow"], "workflow", 200) or None,
            status=c.FAILED_STATUSES if status == "failed" else status, since_ns=since,
            min_duration_ms=number_arg("min_duration_ms", None, 0, 1e12, float),
            error_text=check_text(f["q"], "q", 200) or None, attribute=attribute)
    except HttpError as e:
        return render_template("runs.html", error=e.message, **overview.empty_runs_page(f)), 400
    return render_template("runs.html", error=None, **model)


@bp.get(c.ERROR_PAGE_PATH + "/<fingerprint>")
def error_group(fingerprint: str):
    """One error group: what it says, its trend over 24 h, the runs it hit, what those runs share against
    the other runs of the workflow it hits most and what fixed it before (:func:`overview.error_page`)."""
    check_text(fingerprint, "fingerprint", 64)
    model = overview.error_page(run_store(), fingerprint, _outcome_keys(), time.time_ns())
    if model is None:
        return render_template("not_found.html", run_id=fingerprint,
                               message=f"No error group with fingerprint {fingerprint!r}."), 404
    return render_template("error_group.html", error=None, **model)

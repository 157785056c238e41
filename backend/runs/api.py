"""Runs, replay and flame graphs over HTTP; the run page.

- ``GET /api/v1/runs``: filters ``workflow``, ``status``, ``since``/``until``
  (RFC 3339 or Unix seconds), ``min_duration_ms``, ``limit``, ``offset``.
- ``GET /api/v1/runs/<id>``: the run, its span tree, critical path and errors.
  ``<id>`` is a correlation_id, or a trace_id as exemplars and log lines carry.
- ``GET /api/v1/runs/<id>/replay?step=N``: the state after step N and its diff from N − 1.
- ``GET /api/v1/flamegraph``: Grafana Flame Graph data frame (``format=svg`` for a picture)
  for ``workflow`` / ``correlation_id`` over ``since``/``until``.
- ``GET /api/v1/flamegraph/diff``: baseline window vs recent window.
- ``GET /runs/<id>``: the server-rendered run page; ``/runs/<id>/flamegraph.svg``.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, render_template, request

from exporter import conventions as c
from exporter.web import HttpError

from .. import flamegraph as fg
from ..ext import current_flowscope, run_store
from ..query import check_text, is_int, iso_ns, json_response, number_arg, parse_time
from . import service
from .replay import StepOutOfRange, replay
from .run_page import run_page as run_page_model
from .service import LoadedRun

RUN_STATUSES = (*c.STATUSES, "in_progress")

bp = Blueprint("runs", __name__, template_folder="templates")


def _load(run_id: str) -> LoadedRun:
    """The run ``run_id`` of this app's store: 400 for a bad id (checked first), 404 if unknown or no store."""
    service.check_run_id(run_id)
    return service.load_run(run_store(), run_id)


def _windows() -> tuple[tuple[int, int], tuple[int, int]]:
    """(baseline, recent) windows: explicit bounds, or the last ``window_s`` against the one before it."""
    now = time.time_ns()
    w = number_arg("window_s", 3600, 1, 90 * 86400, float)
    until = parse_time(request.args["until"], "until") if request.args.get("until") else now
    since = (parse_time(request.args["since"], "since") if request.args.get("since")
             else max(0, until - int(w * 1e9)))
    b_until = (parse_time(request.args["baseline_until"], "baseline_until") if request.args.get("baseline_until")
               else since)
    b_since = (parse_time(request.args["baseline_since"], "baseline_since") if request.args.get("baseline_since")
               else max(0, b_until - (until - since)))
    for lo, hi, f in ((since, until, "since"), (b_since, b_until, "baseline_since")):
        if lo >= hi:
            raise HttpError(400, "invalid_query", f"{f} must be before its window's end", f)
    return (b_since, b_until), (since, until)


def _workflow(value: str | None) -> str | None:
    """A workflow filter; Grafana's "All" (``.*``, as the dashboards' variable sends it) means no filter."""
    return None if not value or value in (".*", "$__all", "All") else value


@bp.get(c.RUNS_PATH)
def list_runs():
    a = request.args
    status = a.get("status") or None
    if status is not None and status not in RUN_STATUSES:
        raise HttpError(400, "invalid_query", f"status must be one of {', '.join(c.STATUSES)}", "status")
    since = parse_time(a["since"], "since") if a.get("since") else None
    until = parse_time(a["until"], "until") if a.get("until") else None
    workflow = check_text(a["workflow"], "workflow") if a.get("workflow") else None
    rows = service.list_runs(run_store(), current_flowscope().config.public_url, workflow=workflow, status=status,
                             since_ns=since, until_ns=until,
                             min_duration_ms=number_arg("min_duration_ms", None, 0, 1e12, float),
                             limit=number_arg("limit", 100, 1, 1000), offset=number_arg("offset", 0, 0, 10**9))
    return json_response({"runs": rows, "count": len(rows)})


@bp.get(c.RUNS_PATH + "/<path:run_id>/replay")
def replay_step(run_id: str):
    got = _load(run_id)
    raw = request.args.get("step")
    if raw is None or not is_int(raw):  # ASCII digits: "²".isdigit() is True, int("²") fails
        raise HttpError(400, "invalid_query", "step must be a whole number (0-based step index)", "step")
    try:
        body = replay(got.steps, int(raw))
    except StepOutOfRange as e:
        return json_response({"error": {"code": "step_out_of_range", "message": str(e), "field": "step",
                                        "valid_range": [0, e.total - 1] if e.total else None}}, 400)
    body["correlation_id"] = got.run.correlation_id
    body["span"]["on_critical_path"] = got.steps[body["step"]]["on_critical_path"]
    return json_response(body)


@bp.get(c.RUNS_PATH + "/<path:run_id>")
def get_run(run_id: str):
    return json_response(service.run_json(_load(run_id), current_flowscope().config))


@bp.get(c.FLAMEGRAPH_PATH)
def flamegraph():
    a = request.args
    if not (a.get("workflow") or a.get("correlation_id")):
        raise HttpError(400, "invalid_query", "workflow or correlation_id is required", "workflow")
    for k in ("workflow", "correlation_id"):
        check_text(a.get(k, ""), k)
    since = parse_time(a["since"], "since") if a.get("since") else None
    until = parse_time(a["until"], "until") if a.get("until") else None
    stacks = run_store().profile_stacks(_workflow(a.get("workflow")), a.get("correlation_id") or None, since,
                                        until)
    tree = fg.build_tree(stacks)
    title = a.get("correlation_id") or a.get("workflow")
    if a.get("format") == "svg":
        return Response(fg.svg(tree, f"CPU profile: {title}"), mimetype="image/svg+xml")
    return json_response(fg.dataframe(tree, name=title))


@bp.get(c.FLAMEGRAPH_PATH + "/diff")
def flamegraph_diff():
    wf = request.args.get("workflow")
    if not wf:
        raise HttpError(400, "invalid_query", "workflow is required", "workflow")
    check_text(wf, "workflow")
    (bs, bu), (s, u) = _windows()
    store = run_store()
    tree = fg.build_tree(store.profile_stacks(_workflow(wf), None, bs, bu),
                         store.profile_stacks(_workflow(wf), None, s, u))
    if request.args.get("format") == "svg":
        return Response(fg.svg(tree, f"CPU profile diff: {wf}", diff=True), mimetype="image/svg+xml")
    frame = fg.dataframe(tree, diff=True, name=wf)
    frame["schema"]["meta"]["custom"] = {"baseline": [iso_ns(bs), iso_ns(bu)], "recent": [iso_ns(s), iso_ns(u)]}
    return json_response(frame)


@bp.get(c.RUN_PAGE_PATH + "/<path:run_id>/flamegraph.svg")
def run_flamegraph(run_id: str):
    got = _load(run_id)
    cid = got.run.correlation_id
    tree = fg.build_tree(run_store().profile_stacks(correlation_id=cid))
    return Response(fg.svg(tree, f"CPU profile of run {cid}"), mimetype="image/svg+xml")


@bp.get(c.RUN_PAGE_PATH + "/<path:run_id>")
def run_page(run_id: str):
    try:
        got = _load(run_id)
    except HttpError as e:
        if e.status != 404:
            raise
        return Response(render_template("not_found.html", run_id=run_id, message=e.message), status=404)
    return render_template("run.html", **run_page_model(run_store(), got, current_flowscope().config))

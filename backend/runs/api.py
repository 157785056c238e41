"""Runs, replay and flame graphs over HTTP; the run page.

- ``GET /api/v1/runs``: filters ``workflow``, ``status``, ``since``/``until``
  (RFC 3339 or Unix seconds), ``min_duration_ms``, ``limit``, ``offset``.
- ``GET /api/v1/runs/<id>``: the run, its span tree, critical path and errors.
  ``<id>`` is a correlation_id, or a trace_id as exemplars and log lines carry.
- ``GET /api/v1/runs/<id>/replay?step=N``: the state after step N and its diff from N − 1;
  ``watch=cart.total`` (repeatable) adds that path's value at every step and where it changed;
  ``break=EXPR&from=N`` (repeatable ``break``) runs to the next step after N where one holds.
- ``GET /api/v1/flamegraph``: Grafana Flame Graph data frame (``format=svg`` for a picture)
  for ``workflow`` / ``correlation_id`` over ``since``/``until``.
- ``GET /api/v1/flamegraph/diff``: baseline window vs recent window, or ``baseline_run`` vs ``run``.
- ``GET /runs/<id>``: the server-rendered run page; ``/runs/<id>/flamegraph.svg``.

Every flame graph takes ``kind``: ``cpu`` (the default, seconds), ``alloc`` (bytes allocated) or
``held`` (bytes still held at the runs' end), from the SDK's memory profiler or posted memory profiles.
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
from .breakpoints import MAX_EXPRESSION_CHARS, BreakpointError, parse_path
from .breakpoints import parse as parse_breakpoint
from .replay import MAX_BREAKPOINTS, MAX_WATCHES, StepOutOfRange, debug
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
    """``step=N``, or ``break=EXPR`` (repeatable) with ``from=N``; ``watch=PATH`` (repeatable) with either."""
    got = _load(run_id)
    a = request.args
    watches, exprs = a.getlist("watch"), a.getlist("break")
    if len(watches) > MAX_WATCHES:
        raise HttpError(400, "invalid_watch", f"at most {MAX_WATCHES} watch paths a request", "watch")
    if len(exprs) > MAX_BREAKPOINTS:
        raise HttpError(400, "invalid_breakpoint", f"at most {MAX_BREAKPOINTS} break expressions a request", "break")
    for w in watches:
        try:
            parse_path(w)
        except BreakpointError as e:
            return _bad_expression("invalid_watch", "watch", e)
    conditions = []
    for x in exprs:
        try:
            conditions.append(parse_breakpoint(x))
        except BreakpointError as e:
            return _bad_expression("invalid_breakpoint", "break", e)
    step, after = None, -1
    if conditions:
        if a.get("step") is not None:
            raise HttpError(400, "invalid_query", "with break=, say where to run from with from=N, not step=", "step")
        raw = a.get("from", "-1")
        if not is_int(raw) or not -1 <= int(raw) < max(len(got.steps), 1):
            raise HttpError(400, "invalid_query", f"from must be a step number -1..{len(got.steps) - 1} (-1: before "
                            "the first step)", "from")
        after = int(raw)
    else:
        if a.get("from") is not None:
            raise HttpError(400, "invalid_query", "from= goes with break=", "from")
        raw = a.get("step")
        if raw is None or not is_int(raw):  # ASCII digits: "²".isdigit() is True, int("²") fails
            raise HttpError(400, "invalid_query", "step must be a whole number (0-based step index)", "step")
        step = int(raw)
    try:
        body = debug(got.steps, step, watches, conditions, after)
    except StepOutOfRange as e:
        return json_response({"error": {"code": "step_out_of_range", "message": str(e), "field": "step",
                                        "valid_range": [0, e.total - 1] if e.total else None}}, 400)
    body["correlation_id"] = got.run.correlation_id
    body["span"]["on_critical_path"] = got.steps[body["step"]]["on_critical_path"]
    return json_response(body)


def _bad_expression(code: str, field: str, e: BreakpointError):
    """400 naming the parameter, the expression and the position (0-based) the parser stopped at."""
    return json_response({"error": {"code": code, "message": f"{field}: {e}", "field": field,
                                    "position": e.position, "expression": e.text[:MAX_EXPRESSION_CHARS]}}, 400)


@bp.get(c.RUNS_PATH + "/<path:run_id>")
def get_run(run_id: str):
    return json_response(service.run_json(_load(run_id), current_flowscope().config))


#: What each flame graph ``kind`` shows, and its unit.
FLAME_KINDS = {"cpu": ("CPU profile", "s"), "alloc": ("Memory allocated", "bytes"),
               "held": ("Memory held at the end", "bytes")}


def _kind() -> tuple[str, str, str]:
    """(kind, title, unit) of the ``kind`` argument: cpu (the default), alloc or held; 400 otherwise."""
    kind = request.args.get("kind") or "cpu"
    if kind not in FLAME_KINDS:
        raise HttpError(400, "invalid_query", f"kind must be one of {', '.join(FLAME_KINDS)}, got {kind[:40]!r}",
                        "kind")
    return kind, *FLAME_KINDS[kind]


@bp.get(c.FLAMEGRAPH_PATH)
def flamegraph():
    a = request.args
    if not (a.get("workflow") or a.get("correlation_id")):
        raise HttpError(400, "invalid_query", "workflow or correlation_id is required", "workflow")
    for k in ("workflow", "correlation_id"):
        check_text(a.get(k, ""), k)
    kind, what, unit = _kind()
    since = parse_time(a["since"], "since") if a.get("since") else None
    until = parse_time(a["until"], "until") if a.get("until") else None
    stacks = run_store().profile_stacks(_workflow(a.get("workflow")), a.get("correlation_id") or None, since,
                                        until, kind=kind)
    tree = fg.build_tree(stacks)
    title = a.get("correlation_id") or a.get("workflow")
    if a.get("format") == "svg":
        return Response(fg.svg(tree, f"{what}: {title}", unit=unit), mimetype="image/svg+xml")
    return json_response(fg.dataframe(tree, name=title, unit=unit))


@bp.get(c.FLAMEGRAPH_PATH + "/diff")
def flamegraph_diff():
    """Two windows of a workflow (``workflow``, ``since``/``until``, ``baseline_*``), or two runs
    (``baseline_run`` and ``run``: correlation or trace ids)."""
    a = request.args
    kind, what, unit = _kind()
    store = run_store()
    if a.get("run") or a.get("baseline_run"):
        if not (a.get("run") and a.get("baseline_run")):
            missing = "run" if not a.get("run") else "baseline_run"
            raise HttpError(400, "invalid_query", "a diff of two runs needs both run and baseline_run", missing)
        base, recent = _load(a["baseline_run"]).run, _load(a["run"]).run
        tree = fg.build_tree(store.profile_stacks(correlation_id=base.correlation_id, kind=kind),
                             store.profile_stacks(correlation_id=recent.correlation_id, kind=kind))
        name = f"{base.correlation_id} → {recent.correlation_id}"
        custom: dict = {"baseline_run": base.correlation_id, "run": recent.correlation_id}
    else:
        wf = a.get("workflow")
        if not wf:
            raise HttpError(400, "invalid_query", "workflow (or run and baseline_run) is required", "workflow")
        check_text(wf, "workflow")
        (bs, bu), (s, u) = _windows()
        tree = fg.build_tree(store.profile_stacks(_workflow(wf), None, bs, bu, kind=kind),
                             store.profile_stacks(_workflow(wf), None, s, u, kind=kind))
        name = wf
        custom = {"baseline": [iso_ns(bs), iso_ns(bu)], "recent": [iso_ns(s), iso_ns(u)]}
    if a.get("format") == "svg":
        return Response(fg.svg(tree, f"{what} diff: {name}", diff=True, unit=unit), mimetype="image/svg+xml")
    frame = fg.dataframe(tree, diff=True, name=name, unit=unit)
    frame["schema"]["meta"]["custom"] = custom
    return json_response(frame)


@bp.get(c.RUN_PAGE_PATH + "/<path:run_id>/flamegraph.svg")
def run_flamegraph(run_id: str):
    got = _load(run_id)
    kind, what, unit = _kind()
    cid = got.run.correlation_id
    tree = fg.build_tree(run_store().profile_stacks(correlation_id=cid, kind=kind))
    return Response(fg.svg(tree, f"{what} of run {cid}", unit=unit), mimetype="image/svg+xml")


@bp.get(c.RUN_PAGE_PATH + "/<path:run_id>")
def run_page(run_id: str):
    try:
        got = _load(run_id)
    except HttpError as e:
        if e.status != 404:
            raise
        return Response(render_template("not_found.html", run_id=run_id, message=e.message), status=404)
    return render_template("run.html", **run_page_model(run_store(), got, current_flowscope().config))

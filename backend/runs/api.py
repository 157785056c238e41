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

import json
import math
import time
from urllib.parse import quote, urlencode

from flask import Blueprint, Response, current_app, render_template, request
from markupsafe import Markup

from exporter import conventions as c
from exporter.web import HttpError

from .. import flamegraph as fg
from ..analysis.groups import status_of, suggestions
from ..dashboards.common import LOKI_DS_UID
from ..query import check_text, is_int, iso_ns, json_response, number_arg, parse_time, run_store
from .replay import StepOutOfRange, critical_path, replay, span_tree, steps_of, summary

RUN_STATUSES = (*c.STATUSES, "in_progress")
LAYER_COLORS = {"frontend": "#8e6fd8", "api": "#3d85c6", "database": "#e69138", "cache": "#6aa84f",
                "queue": "#c27ba0", "external": "#45818e", "worker": "#a61c00", "system": "#999999",
                "other": "#b7b7b7"}


def logs_url(cfg, run: dict) -> str:
    """Grafana Explore on the Loki datasource, this run's lines (correlation_id is structured metadata)."""
    expr = f'{{{c.STREAM_LABELS[1]}="{run["workflow"]}"}} | correlation_id="{run["correlation_id"]}"'
    start_ms, end_ms = run["start_ns"] // 1_000_000 - 60_000, run["end_ns"] // 1_000_000 + 60_000
    panes = {"run": {"datasource": LOKI_DS_UID,
                     "queries": [{"refId": "A", "expr": expr, "datasource": {"type": "loki", "uid": LOKI_DS_UID}}],
                     "range": {"from": str(start_ms), "to": str(end_ms)}}}
    base = (cfg.grafana_url or "http://localhost:3000").rstrip("/")
    return f"{base}/explore?" + urlencode({"schemaVersion": 1, "orgId": 1,
                                           "panes": json.dumps(panes, separators=(",", ":"))})


def load_run(run_id: str) -> dict:
    """The run with what every view needs: steps, tree, critical path. 404 if unknown."""
    if not run_id or len(run_id) > 128 or "\x00" in run_id:
        raise HttpError(400, "invalid_id", "a correlation_id or trace_id of 1..128 characters is expected", "id")
    got = run_store().get_run(run_id)
    if got is None:
        raise HttpError(404, "run_not_found", f"no stored run with correlation_id or trace_id {run_id!r}", "id")
    got["critical_path"] = path = critical_path(got["spans"])
    crit = set(path)
    for s in got["spans"]:
        s["on_critical_path"] = s["span_id"] in crit
    got["steps"] = steps_of(got["spans"])
    return got


def runjson_response(got: dict, cfg) -> dict:
    run = dict(got["run"])
    cid = run["correlation_id"]
    run["start"], run["end"] = iso_ns(run["start_ns"]), iso_ns(run["end_ns"])
    public = cfg.public_url.rstrip("/")
    # state snapshots stay out of the tree (up to state_max_bytes each): /replay serves them step by step
    light = [{**{k: v for k, v in s.items() if k != "state"}, "has_state": s["state"] is not None}
             for s in got["spans"]]
    return {
        "run": run,
        "tree": span_tree(light),
        "steps": [summary(s) for s in got["steps"]],
        "critical_path": got["critical_path"],
        "errors": got["errors"],
        "profiles": got["profiles"],
        # runs linked by span links (a queue consumer and its producer), each with its page
        "linked_runs": [{**r, "page": f"{public}{c.RUN_PAGE_PATH}/{quote(r['correlation_id'])}"}
                        for r in got.get("linked_runs") or ()],
        "links": {"page": f"{public}{c.RUN_PAGE_PATH}/{quote(cid)}", "logs": logs_url(cfg, run),
                  "flamegraph": f"{public}{c.FLAMEGRAPH_PATH}?correlation_id={quote(cid)}",
                  "replay": f"{public}{c.RUNS_PATH}/{quote(cid)}/replay?step=0"},
    }


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


def time_axis(total_ms: float, target: int = 8) -> dict:
    """Ticks for the waterfall's time axis: a round step (1, 2 or 5 × 10ⁿ) giving about ``target`` ticks.

    ``{"step_pct": ..., "ticks": [{"pct": 0.0, "label": "0 ms", "align": "start"}, ...]}``; ``pct`` is
    the tick's position across the track, as the bars' ``left`` is, so ticks and bars line up.

        time_axis(730)["ticks"][1]["label"]   # "100 ms"
    """
    total_ms = total_ms if total_ms > 0 and math.isfinite(total_ms) else 1e-6
    raw = total_ms / target
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    if total_ms >= 1000:  # the unit of the largest label, so labels read 0.2 s … 1.2 s, not 1200 ms
        unit, scale = "s", 1000.0
    elif total_ms >= 1:
        unit, scale = "ms", 1.0
    elif total_ms >= 1e-3:
        unit, scale = "µs", 1e-3
    else:
        unit, scale = "ns", 1e-6
    decimals = max(0, -math.floor(math.log10(step / scale) + 1e-9))
    ticks = []
    for i in range(int(total_ms / step * (1 + 1e-9)) + 1):
        pct = 100 * i * step / total_ms
        ticks.append({"pct": pct, "label": f"{i * step / scale:.{decimals}f} {unit}" if i else f"0 {unit}",
                      "align": "start" if i == 0 else "end" if pct > 94 else "middle"})
    return {"step_pct": 100 * step / total_ms, "ticks": ticks}


#: A waterfall longer than this opens folded (see :func:`fold`).
FOLD_ABOVE = 150


def fold(rows: list[dict], limit: int = FOLD_ABOVE) -> int | None:
    """Fold a long waterfall so that it opens readable, with every failure on screen.

    ``rows`` are the span tree depth first, each with its ``depth`` and ``failed``. Every row gets
    ``descendants`` (the rows its toggle hides), ``folded`` and ``hidden``. A run of up to ``limit`` spans opens
    whole. A longer one opens folded at the deepest level that keeps at most ``limit`` rows (but never above the
    root's children), except along the way to a failed span, which stays open. Returns that level, or None.

        fold(rows_of_a_1000_span_batch_job)   # 1: the root and one row per account, the failing account open
    """
    n = len(rows)
    end, stack = [n] * n, []  # a subtree is contiguous: it ends at the next row no deeper than its root
    for i, r in enumerate(rows):
        while stack and rows[stack[-1]]["depth"] >= r["depth"]:
            end[stack.pop()] = i
        stack.append(i)
    failed_before = [0]
    for r in rows:
        failed_before.append(failed_before[-1] + bool(r["failed"]))
    level = None
    if n > limit:
        per_depth: dict[int, int] = {}
        for r in rows:
            per_depth[r["depth"]] = per_depth.get(r["depth"], 0) + 1
        level, shown = 1, 0
        for d in sorted(per_depth):
            shown += per_depth[d]
            if shown > limit:
                break
            level = max(level, d)
    hide_below = None
    for i, r in enumerate(rows):
        r["descendants"] = end[i] - i - 1
        r["hidden"] = hide_below is not None and r["depth"] > hide_below
        if not r["hidden"]:
            hide_below = None
        failed_below = failed_before[end[i]] > failed_before[i + 1]
        r["folded"] = level is not None and r["depth"] >= level and r["descendants"] > 0 and not failed_below
        if r["folded"] and not r["hidden"]:
            hide_below = r["depth"]
    return level


def failure_chains(errors: list[dict], spans: dict[str, dict], parent: dict[str, str]) -> list[dict]:
    """One entry per failure: ``{"origin": error, "also": [callers it failed through, deepest first], "again": [...]}``.

    An exception deep down fails every caller above it, and a caller often names it its own way (the root's
    error_type is its wrapper, a client span and its server disagree), so errors merge into one entry when
    their spans lie on one ancestor chain, or when they share a fingerprint. The deepest span is the origin.
    ``again`` holds same-fingerprint errors off the chain (a retry, a sibling). Errors without a span of this
    run (logged errors) merge by fingerprint only. Entries are in time order.
    """
    def depth(e: dict) -> int:
        s = spans.get(e["span_id"])
        return s["depth"] if s else -1

    entries: list[dict] = []
    by_fp: dict[str, dict] = {}
    for e in sorted(errors, key=lambda e: (-depth(e), e["time_ns"], e["id"])):
        entry = by_fp.get(e["fingerprint"])
        if entry is None and e["span_id"] in spans:
            entry = next((x for x in entries if e["span_id"] in x["chain"]), None)
        if entry is None:
            chain, sid = set(), e["span_id"]
            while sid in spans and sid not in chain:  # the tree's parents: acyclic, but stay safe
                chain.add(sid)
                sid = parent.get(sid)
            entry = {"origin": e, "also": [], "again": [], "chain": chain}
            entries.append(entry)
        else:  # a caller it failed through, or the same error again elsewhere (a retry, a sibling)
            entry["also" if e["span_id"] in entry["chain"] else "again"].append(e)
        by_fp.setdefault(e["fingerprint"], entry)
    entries.sort(key=lambda x: (x["origin"]["time_ns"], x["origin"]["id"]))
    return entries


def _json_text(v) -> str:
    return json.dumps(v, ensure_ascii=False, sort_keys=True, default=str)


def _details(rows: list[dict], errors: list[dict], t0: int) -> dict[str, dict]:
    """What the details pane shows per span, by span_id: names in full, attributes sorted and JSON-formatted,
    and kind, resource, events and links when the store has them (older runs have none)."""
    errs: dict[str, list] = {}
    for e in errors:
        errs.setdefault(e["span_id"], []).append({k: e[k] for k in ("error_type", "message", "fingerprint",
                                                                    "stack_trace")})
    out = {}
    for r in rows:
        d = {k: r.get(k) for k in ("span_id", "parent_span_id", "service", "layer", "component", "operation",
                                   "status", "error_type", "error_message", "step_index", "on_critical_path")}
        d["start_ms"], d["duration_ms"] = (r["start_ns"] - t0) / 1e6, r["duration_ms"]
        d["attributes"] = [[k, _json_text(v)] for k, v in sorted((r.get("attributes") or {}).items())]
        if r.get("kind") is not None:
            d["kind"] = r["kind"]
        if isinstance(r.get("resource"), dict) and r["resource"]:
            d["resource"] = [[k, _json_text(v)] for k, v in sorted(r["resource"].items())]
        events = []
        for ev in r.get("events") or ():
            if not isinstance(ev, dict):
                continue
            when = next((ev[k] for k in ("time_ns", "time_unix_nano", "timestamp_ns", "time") if
                         isinstance(ev.get(k), int | float)), None)
            events.append({"name": str(ev.get("name", "")),
                           "offset_ms": None if when is None else (when - t0) / 1e6,
                           "attributes": [[k, _json_text(v)] for k, v in
                                          sorted((ev.get("attributes") or {}).items())]})
        if events:
            d["events"] = events
        links = []
        for ln in r.get("links") or ():
            if isinstance(ln, dict) and ln.get("trace_id"):
                links.append({"trace_id": str(ln["trace_id"]), "span_id": ln.get("span_id"),
                              "href": f"{c.RUN_PAGE_PATH}/{quote(str(ln['trace_id']))}",
                              "attributes": [[k, _json_text(v)] for k, v in
                                             sorted((ln.get("attributes") or {}).items())]})
        if links:
            d["links"] = links
        d["errors"] = errs.get(r["span_id"], [])
        out[r["span_id"]] = d
    return out


def create_blueprint() -> Blueprint:
    bp = Blueprint("runs", __name__, template_folder="templates")

    @bp.get(c.RUNS_PATH)
    def list_runs():
        a = request.args
        status = a.get("status") or None
        if status is not None and status not in RUN_STATUSES:
            raise HttpError(400, "invalid_query", f"status must be one of {', '.join(c.STATUSES)}", "status")
        since = parse_time(a["since"], "since") if a.get("since") else None
        until = parse_time(a["until"], "until") if a.get("until") else None
        workflow = check_text(a["workflow"], "workflow") if a.get("workflow") else None
        rows = run_store().list_runs(workflow=workflow, status=status, since_ns=since, until_ns=until,
                                  min_duration_ms=number_arg("min_duration_ms", None, 0, 1e12, float),
                                  limit=number_arg("limit", 100, 1, 1000), offset=number_arg("offset", 0, 0, 10**9))
        public = current_app.extensions["flowscope"].config.public_url.rstrip("/")
        for r in rows:
            r["start"], r["end"] = iso_ns(r["start_ns"]), iso_ns(r["end_ns"])
            r["page"] = f"{public}{c.RUN_PAGE_PATH}/{quote(r['correlation_id'])}"
        return json_response({"runs": rows, "count": len(rows)})

    @bp.get(c.RUNS_PATH + "/<path:run_id>/replay")
    def replay_step(run_id: str):
        got = load_run(run_id)
        raw = request.args.get("step")
        if raw is None or not is_int(raw):  # ASCII digits: "²".isdigit() is True, int("²") fails
            raise HttpError(400, "invalid_query", "step must be a whole number (0-based step index)", "step")
        try:
            body = replay(got["steps"], int(raw))
        except StepOutOfRange as e:
            return json_response({"error": {"code": "step_out_of_range", "message": str(e), "field": "step",
                                    "valid_range": [0, e.total - 1] if e.total else None}}, 400)
        body["correlation_id"] = got["run"]["correlation_id"]
        body["span"]["on_critical_path"] = got["steps"][body["step"]]["on_critical_path"]
        return json_response(body)

    @bp.get(c.RUNS_PATH + "/<path:run_id>")
    def get_run(run_id: str):
        return json_response(runjson_response(load_run(run_id), current_app.extensions["flowscope"].config))

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
        got = load_run(run_id)
        cid = got["run"]["correlation_id"]
        tree = fg.build_tree(run_store().profile_stacks(correlation_id=cid))
        return Response(fg.svg(tree, f"CPU profile of run {cid}"), mimetype="image/svg+xml")

    @bp.get(c.RUN_PAGE_PATH + "/<path:run_id>")
    def run_page(run_id: str):
        try:
            got = load_run(run_id)
        except HttpError as e:
            if e.status != 404:
                raise
            return Response(render_template("not_found.html", run_id=run_id, message=e.message), status=404)
        cfg = current_app.extensions["flowscope"].config
        body = runjson_response(got, cfg)
        run = body["run"]
        t0, total = run["start_ns"], max(run["end_ns"] - run["start_ns"], 1)
        rows, parent = [], {}
        work = list(reversed(body["tree"]))  # depth first, iteratively: trees are client-shaped
        while work:
            n = work.pop()
            rows.append(n)
            for child in n["children"]:
                parent[child["span_id"]] = n["span_id"]
            work.extend(reversed(n["children"]))
        step_index = {s["span_id"]: i for i, s in enumerate(got["steps"])}
        for r in rows:
            r["left_pct"] = 100 * (r["start_ns"] - t0) / total
            r["width_pct"] = max(100 * (r["end_ns"] - r["start_ns"]) / total, 0.15)
            r["duration_ms"] = (r["end_ns"] - r["start_ns"]) / 1e6
            r["color"] = LAYER_COLORS.get(r["layer"], LAYER_COLORS["other"])
            r["step_index"] = step_index.get(r["span_id"])
            r["failed"] = r["status"] in c.FAILED_STATUSES
            r["db_pattern"] = (r["attributes"] or {}).get(c.ATTR_DB_PATTERN)
        # each error's group: how often it happens, whether it came back, and what fixed it before
        store, groups = run_store(), {}
        for e in body["errors"]:
            fp = e["fingerprint"]
            if fp not in groups:
                g = store.error_group(fp)
                if g is not None:
                    g["status"] = status_of(g)
                    g["suggestion"] = next(iter(suggestions(g, g["resolutions"])), None)
                groups[fp] = g
        by_id = {r["span_id"]: r for r in rows}
        fold(rows)
        flame = None
        if body["profiles"]:
            cid = run["correlation_id"]
            flame = Markup(fg.svg(fg.build_tree(store.profile_stacks(correlation_id=cid)), f"CPU profile of run {cid}"))
        return render_template("run.html", run=run, rows=rows, body=body, layers=LAYER_COLORS,
                               run_errors=failure_chains(body["errors"], by_id, parent),
                               axis=time_axis(total / 1e6), details=_details(rows, body["errors"], t0),
                               steps=len(got["steps"]), api=c.RUNS_PATH, page=c.RUN_PAGE_PATH,
                               db_findings=[r for r in rows if r["db_pattern"]], groups=groups,
                               errors_path=c.ERROR_PAGE_PATH, flamegraph_svg=flame, rows_by_id=by_id)

    return bp

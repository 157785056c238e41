"""The run page's view model: the waterfall rows, their time axis and folding, each failure's chain, the
details pane and each error's group, as :func:`run_page` hands them to ``run.html``::

    got = load_run(store, "c-1")                          # backend.runs.service
    render_template("run.html", **run_page(store, got, cfg))
"""

from __future__ import annotations

import json
import math
from urllib.parse import quote

from markupsafe import Markup

from exporter import conventions as c
from exporter.config import Config
from exporter.store import RunStore

from .. import flamegraph as fg
from ..analysis.groups import status_of, suggestions
from ..analysis.service import group_json
from ..logs.service import run_timeline
from .service import LoadedRun, run_json

LAYER_COLORS = {"frontend": "#8e6fd8", "api": "#3d85c6", "database": "#e69138", "cache": "#6aa84f",
                "queue": "#c27ba0", "external": "#45818e", "worker": "#a61c00", "system": "#999999",
                "other": "#b7b7b7"}


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


def span_details(rows: list[dict], errors: list[dict], t0: int) -> dict[str, dict]:
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


def memory_section(store: RunStore, cid: str, rows: list[dict], threshold: int, with_profiles: bool = True) -> dict:
    """The run page's memory: peak and net bytes, the flame graphs of bytes allocated and still held (when the
    run has memory profiles), and the steps whose memory grew by more than ``threshold`` bytes (the SDK's
    ``flowscope.memory.growth_bytes`` attribute), largest first.

        memory_section(store, "c-1", rows, 10 << 20)["flagged"][0]["growth"]   # "+12.0 MiB"
    """
    flagged = []
    for r in rows:
        g = (r.get("attributes") or {}).get(c.ATTR_MEMORY_GROWTH)
        if isinstance(g, int) and not isinstance(g, bool) and g > threshold:
            flagged.append({"row": r, "bytes": g, "growth": "+" + fg.fmt_value(g, "bytes")})
    flagged.sort(key=lambda f: -f["bytes"])
    out: dict = {"flagged": flagged, "threshold": fg.fmt_value(threshold, "bytes"), "profile": None}
    mem = store.run_memory(cid) if with_profiles else None
    if mem is not None:
        graphs = {}
        for kind, what in (("alloc", "Allocated during the run"), ("held", "Still held at its end")):
            stacks = store.profile_stacks(correlation_id=cid, kind=kind)
            graphs[kind] = Markup(fg.svg(fg.build_tree(stacks), f"{what}: run {cid}", unit="bytes"))
        out["profile"] = {
            "peak": None if mem.peak_bytes is None else fg.fmt_value(mem.peak_bytes, "bytes"),
            "net": None if mem.net_bytes is None else fg.fmt_value(mem.net_bytes, "bytes"),
            "alloc": fg.fmt_value(mem.alloc_bytes, "bytes"), "alloc_svg": graphs["alloc"],
            "held_svg": graphs["held"]}
    return out


def run_page(store: RunStore, got: LoadedRun, cfg: Config) -> dict:
    """What ``run.html`` renders for the run ``got`` (:func:`~backend.runs.service.load_run`): the run, its
    span rows depth first (positioned, coloured, folded), failures merged into chains, the time axis, the
    details pane per span, each error's group (how often, whether it came back, what fixed it before) and
    the run's CPU flame graph when it has profiles."""
    body = run_json(got, cfg)
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
    step_index = {s["span_id"]: i for i, s in enumerate(got.steps)}
    for r in rows:
        r["left_pct"] = 100 * (r["start_ns"] - t0) / total
        r["width_pct"] = max(100 * (r["end_ns"] - r["start_ns"]) / total, 0.15)
        r["duration_ms"] = (r["end_ns"] - r["start_ns"]) / 1e6
        r["color"] = LAYER_COLORS.get(r["layer"], LAYER_COLORS["other"])
        r["step_index"] = step_index.get(r["span_id"])
        r["failed"] = r["status"] in c.FAILED_STATUSES
        r["db_pattern"] = (r["attributes"] or {}).get(c.ATTR_DB_PATTERN)
    # each error's group: how often it happens, whether it came back, and what fixed it before
    groups: dict[str, dict | None] = {}
    for e in body["errors"]:
        fp = e["fingerprint"]
        if fp not in groups:
            d = store.error_group(fp)
            g = None
            if d is not None:
                g = group_json(d)
                g["status"] = status_of(g)
                g["suggestion"] = next(iter(suggestions(g, g["resolutions"])), None)
            groups[fp] = g
    by_id = {r["span_id"]: r for r in rows}
    fold(rows)
    flame = None
    if body["profiles"]:  # CPU and memory profiles: the CPU graph only when the run has CPU samples
        cid = run["correlation_id"]
        cpu = store.profile_stacks(correlation_id=cid)
        flame = Markup(fg.svg(fg.build_tree(cpu), f"CPU profile of run {cid}")) if cpu else None
    memory = memory_section(store, run["correlation_id"], rows, cfg.memory_step_growth_bytes,
                            with_profiles=bool(body["profiles"]))
    return {"run": run, "rows": rows, "body": body, "layers": LAYER_COLORS,
            "run_errors": failure_chains(body["errors"], by_id, parent),
            "axis": time_axis(total / 1e6), "details": span_details(rows, body["errors"], t0),
            "steps": len(got.steps), "api": c.RUNS_PATH, "page": c.RUN_PAGE_PATH,
            "db_findings": [r for r in rows if r["db_pattern"]], "groups": groups,
            "errors_path": c.ERROR_PAGE_PATH, "flamegraph_svg": flame, "memory": memory, "rows_by_id": by_id,
            # the run's application log lines between its steps (backend.logs)
            "log_timeline": run_timeline(store, run["correlation_id"], run["trace_id"], got.steps, t0)}

"""Generate ``promtool test rules`` cases: every alert shown firing and not firing.

The cases are built from the same spec as the rules, so a changed threshold
changes its tests too; the expected labels and annotations are computed from
the rule templates (which only use ``$labels``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from exporter import conventions as c
from exporter.metrics import float_to_go_string

from ..errors import SpecError
from .generate import (
    SELF_ALERTS,
    absent_alert,
    endpoint_no_traffic_alert,
    prom_seconds,
    quote,
    regression_alert,
    seen_absent_alert,
    self_alerts,
    slo_alerts,
    threshold_alert,
)
from .spec import SLO, Spec, Threshold

WF, COMP, OP = "checkout", "svc", "op"
_PROM_UNITS = {"ms": 0.001 / 60, "s": 1 / 60, "m": 1.0, "h": 60.0, "d": 1440.0, "w": 10080.0, "y": 525600.0}


def _minutes(d: str) -> float:
    return sum(float(n) * _PROM_UNITS[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d|w|y)", d))


def _render(template: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)


def _expected(rule: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    all_labels = {**labels, **rule["labels"]}
    return {"exp_labels": all_labels,
            "exp_annotations": {k: _render(v, all_labels) for k, v in rule["annotations"].items()}}


def _counter(values_per_min: float, minutes: int) -> str:
    return f"0+{values_per_min:g}x{minutes}"


def _constant(v: float, minutes: int) -> str:
    return f"{v:g}+0x{minutes}"


def _series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f"{k}={quote(v)}" for k, v in labels.items()) + "}"


# --- thresholds ------------------------------------------------------------------------------------


def _bucket_for(bounds: tuple[float, ...], ok: Callable[[float], bool]) -> int:
    """Index of a bucket where 'all observations in it' puts p95 where ``ok(p95)`` holds."""
    for k, hi in enumerate(bounds):
        lo = bounds[k - 1] if k else 0.0
        if ok(lo + 0.95 * (hi - lo)):
            return k
    raise SpecError("thresholds", "no histogram bucket puts p95 between these thresholds; widen them or the buckets")


def _threshold_inputs(spec: Spec, t: Threshold, value_case: str, minutes: int
                      ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    w, cr = t.warning, t.critical
    hi_worse = t.metric.higher_is_worse
    if t.metric.name == "response_time":
        cond = {"warning": lambda p: w < p < cr, "critical": lambda p: p > cr, "none": lambda p: p < w}[value_case]
        k = _bucket_for(spec.buckets, cond)
        labels = {c.L_WORKFLOW: WF, c.L_LAYER: t.layer, c.L_COMPONENT: COMP, c.L_OPERATION: OP, c.L_STATUS: "ok"}
        les = [float_to_go_string(b) for b in spec.buckets] + ["+Inf"]
        series = [{"series": _series(f"{c.STEP_DURATION_SECONDS}_bucket", {**labels, "le": le}),
                   "values": _counter(60 if i >= k else 0, minutes)} for i, le in enumerate(les)]
        return series, {c.L_WORKFLOW: WF, c.L_LAYER: t.layer}
    if t.metric.name == "error_rate":
        r = {"warning": (w + cr) / 2, "critical": cr + (1 - cr) / 2, "none": w / 2}[value_case]
        base = {c.L_WORKFLOW: WF, c.L_LAYER: t.layer, c.L_COMPONENT: COMP, c.L_OPERATION: OP}
        series = [
            {"series": _series(f"{c.STEP_DURATION_SECONDS}_count", {**base, c.L_STATUS: "ok"}),
             "values": _counter(round(1000 * (1 - r), 3), minutes)},
            {"series": _series(f"{c.STEP_DURATION_SECONDS}_count", {**base, c.L_STATUS: "error"}),
             "values": _counter(round(1000 * r, 3), minutes)},
        ]
        return series, {c.L_WORKFLOW: WF, c.L_LAYER: t.layer}
    metric = {"hit_rate": c.CUSTOM_HIT_RATE, "memory_usage": c.CUSTOM_MEMORY_USAGE,
              "cpu_usage": c.CUSTOM_CPU_USAGE}[t.metric.name]
    if hi_worse:
        v = {"warning": (w + cr) / 2, "critical": (cr + 1) / 2, "none": w / 2}[value_case]
    else:
        v = {"warning": (w + cr) / 2, "critical": cr / 2, "none": (1 + w) / 2}[value_case]
    labels = {c.L_LAYER: t.layer, c.L_COMPONENT: COMP}
    return [{"series": _series(metric, labels), "values": _constant(round(v, 6), minutes)}], labels


def _threshold_cases(spec: Spec, t: Threshold) -> list[dict[str, Any]]:
    eval_min = int(_minutes(t.for_) + 15)
    minutes = eval_min + 5
    warn_rule = threshold_alert(spec, t, c.SEVERITY_WARNING)
    crit_rule = threshold_alert(spec, t, c.SEVERITY_CRITICAL)
    cases = []
    for value_case, firing in (("warning", [warn_rule]), ("critical", [warn_rule, crit_rule]), ("none", [])):
        series, labels = _threshold_inputs(spec, t, value_case, minutes)
        cases.append({
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [{"eval_time": f"{eval_min}m", "alertname": t.metric.alert,
                                 "exp_alerts": [_expected(r, labels) for r in firing]}],
        })
    return cases


# --- SLOs ------------------------------------------------------------------------------------------


def _unnamed(spec: Spec, stem: str, n: int = 1) -> list[str]:
    """``n`` workflow names the spec does not name: what a default SLO covers without being told."""
    taken = set(spec.named_workflows)
    out: list[str] = []
    i = 0
    while len(out) < n:
        i += 1
        if f"{stem}_{i}" not in taken:
            out.append(f"{stem}_{i}")
    return out


def _workflow(spec: Spec, s: SLO) -> str:
    return _unnamed(spec, "any_workflow")[0] if s.workflow is None else s.workflow


def _slo_inputs(s: SLO, bad_ratio: float, runs_per_min: float, minutes: int, workflow: str) -> list[dict[str, Any]]:
    if s.type == "availability":
        return [
            {"series": _series(c.WORKFLOW_RUNS_TOTAL, {c.L_WORKFLOW: workflow, c.L_STATUS: "ok"}),
             "values": _counter(round(runs_per_min * (1 - bad_ratio), 6), minutes)},
            {"series": _series(c.WORKFLOW_RUNS_TOTAL, {c.L_WORKFLOW: workflow, c.L_STATUS: "error"}),
             "values": _counter(round(runs_per_min * bad_ratio, 6), minutes)},
        ]
    labels = {c.L_WORKFLOW: workflow, c.L_STATUS: "ok"}
    if s.threshold_s is None:  # the spec gives every latency SLO its threshold
        raise ValueError(f"SLO {s.name}: a latency SLO without a threshold")
    le = float_to_go_string(s.threshold_s)
    return [
        {"series": _series(f"{c.WORKFLOW_DURATION_SECONDS}_bucket", {**labels, "le": le}),
         "values": _counter(round(runs_per_min * (1 - bad_ratio), 6), minutes)},
        {"series": _series(f"{c.WORKFLOW_DURATION_SECONDS}_count", labels),
         "values": _counter(runs_per_min, minutes)},
    ]


def _slo_cases(spec: Spec, s: SLO) -> list[dict[str, Any]]:
    page, ticket = slo_alerts(spec, s)
    wf = _workflow(spec, s)
    labels = {c.L_WORKFLOW: wf}
    b = s.error_budget
    hours3 = 180
    cases = [
        # a hard outage: both page and ticket conditions hold
        (_slo_inputs(s, min(0.5, 30 * b), 60, hours3, wf), [page, ticket]),
        # a slow burn between 3x and 6x the budget: a ticket, no page
        (_slo_inputs(s, 4.5 * b, 60, hours3, wf), [ticket]),
        # within budget: nothing
        (_slo_inputs(s, 0.5 * b, 60, hours3, wf), []),
    ]
    if s.min_events > 1:
        # low traffic, mostly failing: fewer runs in every window than min_events, so nothing fires
        total = (s.min_events - 1) * 0.9
        cases.append((_slo_inputs(s, 2 / 3, total / hours3, hours3, wf), []))
    out = [{"interval": "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": f"{hours3}m", "alertname": c.ALERT_SLO_BURN_RATE,
                                 "exp_alerts": [_expected(r, labels) for r in firing]}]}
           for series, firing in cases]
    if s.is_default:
        out.append(_default_coverage_case(spec, s, hours3))
    return out


def _default_coverage_case(spec: Spec, s: SLO, minutes: int) -> dict[str, Any]:
    """A default SLO records every unnamed workflow, and none that has its own SLO of the same type."""
    unnamed = _unnamed(spec, "any_workflow", 2)
    series = [x for w in (*unnamed, *s.except_workflows) for x in _slo_inputs(s, 0.01, 60, minutes, w)]
    rec = c.REC_SLO_ERROR_RATIO.format(window="1h")
    return {"interval": "1m", "input_series": series, "promql_expr_test": [{
        "expr": f"count by ({c.L_WORKFLOW}) ({rec}{{{c.L_SLO}={quote(s.name)}}})",
        "eval_time": f"{minutes}m",
        "exp_samples": [{"labels": _series("", {c.L_WORKFLOW: w}), "value": 1} for w in sorted(unnamed)]}]}


def _seen_absent_cases(spec: Spec) -> list[dict[str, Any]]:
    """A default SLO's absent-data alert: a workflow that ran and stopped fires, one never seen does not, and a
    named workflow that stopped fires its own alert only (not a second one)."""
    rule = seen_absent_alert(spec)
    named = list(spec.named_workflows)
    steady, stopped = _unnamed(spec, "seen_workflow", 2)

    def series(w: str, minutes: int) -> dict[str, Any]:
        return {"series": _series(c.WORKFLOW_RUNS_TOTAL, {c.L_WORKFLOW: w, c.L_STATUS: "ok"}),
                "values": _counter(1, minutes)}

    # every series until 10m; then only `steady` (and the named ones, whose absent() would fire otherwise)
    stops = [series(steady, 40), series(stopped, 10)] + [series(w, 10) for w in named[:1]] + \
        [series(w, 40) for w in named[1:]]
    expected = [_expected(rule, {c.L_WORKFLOW: stopped})] + [_expected(absent_alert(spec, w), {})
                                                             for w in named[:1]]
    runs = [series(steady, 40), series(stopped, 40)] + [series(w, 40) for w in named]
    return [{"interval": "1m", "input_series": inputs,
             "alert_rule_test": [{"eval_time": "35m", "alertname": c.ALERT_WORKFLOW_DATA_ABSENT,
                                  "exp_alerts": exp}]}
            for inputs, exp in ((stops, expected), (runs, []))]


def _absent_cases(spec: Spec, workflow: str, all_workflows: list[str]) -> list[dict[str, Any]]:
    """Absent fires for the one workflow whose series is missing, and not while all are present."""
    rule = absent_alert(spec, workflow)

    def series(workflows: list[str]) -> list[dict[str, Any]]:
        return [{"series": _series(c.WORKFLOW_RUNS_TOTAL, {c.L_WORKFLOW: w, c.L_STATUS: "ok"}),
                 "values": _counter(1, 30)} for w in workflows]

    missing = series([w for w in all_workflows if w != workflow])
    present = series(all_workflows)
    return [{"interval": "1m", "input_series": inputs,
             "alert_rule_test": [{"eval_time": "20m", "alertname": c.ALERT_WORKFLOW_DATA_ABSENT,
                                  "exp_alerts": [_expected(rule, {})] if firing else []}]}
            for inputs, firing in ((missing, True), (present, False))]


def _regression_cases(spec: Spec) -> list[dict[str, Any]]:
    rule = regression_alert(spec)
    labels = {"query": "p95 step latency", c.L_WORKFLOW: WF, c.L_LAYER: "database", c.L_COMPONENT: "postgres",
              c.L_DETECTOR: "change_point"}
    cases = []
    for value, direction, firing in ((1, "regression", True), (0, "regression", False), (1, "improvement", False)):
        cases.append({"interval": "1m",
                      "input_series": [{"series": _series(c.REGRESSION_ACTIVE, {**labels, "direction": direction}),
                                        "values": _constant(value, 10)}],
                      "alert_rule_test": [{"eval_time": "5m", "alertname": c.ALERT_REGRESSION_DETECTED,
                                           "exp_alerts": [_expected(rule, labels)] if firing else []}]})
    return cases


def _endpoint_cases(spec: Spec) -> list[dict[str, Any]]:
    """One endpoint last called at time 0 (fires once the idle time and ``for`` have passed), one called every
    minute (never fires), and the first one before its time (quiet)."""
    rule = endpoint_no_traffic_alert(spec)
    step = 5  # minutes between samples and evaluations (the file's evaluation_interval)
    idle_steps = int(prom_seconds(spec.endpoint_no_traffic_for or "0s") // 60) // step
    end = idle_steps + int(_minutes(spec.for_)) // step + 2
    idle = {c.L_SERVICE: "shop", c.L_METHOD: "GET", c.L_ROUTE: "/admin/export"}
    busy = {c.L_SERVICE: "shop", c.L_METHOD: "GET", c.L_ROUTE: "/items/{id}"}
    inputs = [{"series": _series(c.ENDPOINT_LAST_CALL_TIMESTAMP, idle), "values": _constant(0, end)},
              {"series": _series(c.ENDPOINT_LAST_CALL_TIMESTAMP, busy), "values": _counter(60 * step, end)}]
    return [{"interval": f"{step}m", "input_series": inputs, "alert_rule_test": [
        {"eval_time": f"{end * step}m", "alertname": c.ALERT_ENDPOINT_NO_TRAFFIC,
         "exp_alerts": [_expected(rule, idle)]},
        {"eval_time": f"{max(1, idle_steps - 1) * step}m", "alertname": c.ALERT_ENDPOINT_NO_TRAFFIC,
         "exp_alerts": []}]}]


def _self_cases(spec: Spec) -> list[dict[str, Any]]:
    """Per self alert: a process losing 10 % of what came in (fires), one losing 0.5 % (quiet), and, where what
    came in is counted as kept plus lost, a process that has lost everything and kept nothing (fires); and the
    first one before ``for`` has held (quiet)."""
    end = int(_minutes(spec.rate_window) + _minutes(spec.for_)) + 5
    cases = []
    for rule, entry in zip(self_alerts(spec), SELF_ALERTS, strict=True):
        losing, healthy, silent = ({"job": "flowscope", "instance": i, **dict.fromkeys(entry.extra, "tempo")}
                                   for i in ("a:9464", "b:9464", "c:9464"))
        kept_and_lost = len(entry.came_in) > 1  # else came_in[0] counts everything that came in
        inputs, firing = [], [{**losing, c.L_REASON: "queue_full"}]
        for labels, lost in ((losing, 10.0), (healthy, 0.5)):
            inputs += [{"series": _series(entry.dropped, {**labels, c.L_REASON: "queue_full"}),
                        "values": _counter(lost, end)},
                       {"series": _series(entry.came_in[0], labels),
                        "values": _counter(100 - lost * kept_and_lost, end)}]
        if kept_and_lost:
            firing.append({**silent, c.L_REASON: "retries_exhausted"})
            inputs.append({"series": _series(entry.dropped, firing[-1]), "values": _counter(5, end)})
        evals = [{"eval_time": f"{end}m", "alertname": entry.alert, "exp_alerts": [_expected(rule, f) for f in firing]}]
        if _minutes(spec.for_) >= 2:  # before ``for`` has held: pending, not firing
            evals.append({"eval_time": f"{int(_minutes(spec.for_)) // 2 + 1}m", "alertname": entry.alert,
                          "exp_alerts": []})
        else:  # no time to be pending: quiet before any loss (the first sample)
            evals.append({"eval_time": "0m", "alertname": entry.alert, "exp_alerts": []})
        cases.append({"interval": "1m", "input_series": inputs, "alert_rule_test": evals})
    return cases


def promtool_tests(spec: Spec, rule_file: str) -> dict[str, Any]:
    """Threshold, absent-data and regression cases, evaluated every minute (``for:`` needs it)."""
    tests = [case for t in spec.thresholds for case in _threshold_cases(spec, t)] + _regression_cases(spec)
    workflows = list(spec.named_workflows)
    tests += [case for w in workflows for case in _absent_cases(spec, w, workflows)]
    if spec.has_defaults:
        tests += _seen_absent_cases(spec)
    tests += _self_cases(spec)
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


def promtool_slo_tests(spec: Spec, rule_file: str) -> dict[str, Any]:
    """Burn-rate cases over three hours of data, and the endpoint no-traffic cases over a day or so, evaluated every
    5 minutes to keep promtool quick."""
    tests = [case for s in spec.slos for case in _slo_cases(spec, s)]
    if spec.endpoint_no_traffic_for is not None:
        tests += _endpoint_cases(spec)
    return {"rule_files": [rule_file], "evaluation_interval": "5m", "tests": tests}

"""New Relic NRQL alert conditions from the alert spec, as NerdGraph mutation documents. Pure.

The metrics reach New Relic through Prometheus remote write (:func:`.scrape.newrelic_prometheus_agent`), as
``Metric`` data with the Prometheus names and labels as attributes. Each threshold is one static NRQL
condition with a WARNING and a CRITICAL term (the Prometheus rule's two severities); its runbook URL is the
rule's dashboard link. The GraphQL text is fixed (:data:`CREATE_CONDITION` and friends); what varies is the
variables JSON of each condition::

    conditions(spec)   # [{"name": ..., "nrql": {"query": ...}, "terms": [...], ...}, ...]
"""

from __future__ import annotations

from typing import Any

from backend.rules.generate import ABSENT_FOR
from backend.rules.spec import Spec, Threshold
from exporter import conventions as c
from exporter.metrics import float_to_go_string

from .alerts import Alert, alerts, templates, without_templates
from .datadog import CUSTOM, Unmapped, seconds

#: New Relic's largest aggregation window (sliding windows included) is 120 minutes.
MAX_WINDOW_S = 2 * 3600
AGGREGATION_DELAY_S = 120
INCIDENT_PREFERENCE = "PER_CONDITION_AND_TARGET"  # one incident per facet (workflow, layer...), as Prometheus

FIND_POLICY = """\
query FindPolicy($accountId: Int!, $name: String!) {
  actor { account(id: $accountId) { alerts {
    policiesSearch(searchCriteria: {name: $name}) { policies { id name incidentPreference } }
  } } }
}
"""
CREATE_POLICY = """\
mutation CreatePolicy($accountId: Int!, $policy: AlertsPolicyInput!) {
  alertsPolicyCreate(accountId: $accountId, policy: $policy) { id name incidentPreference }
}
"""
FIND_CONDITIONS = """\
query FindConditions($accountId: Int!, $policyId: ID!, $cursor: String) {
  actor { account(id: $accountId) { alerts {
    nrqlConditionsSearch(searchCriteria: {policyId: $policyId}, cursor: $cursor) {
      nextCursor
      nrqlConditions {
        id name enabled description runbookUrl
        nrql { query }
        terms { operator priority threshold thresholdDuration thresholdOccurrences }
        signal { aggregationWindow aggregationMethod aggregationDelay slideBy }
        expiration { expirationDuration openViolationOnExpiration closeViolationsOnExpiration }
      }
    }
  } } }
}
"""
CREATE_CONDITION = """\
mutation CreateCondition($accountId: Int!, $policyId: ID!, $condition: AlertsNrqlConditionStaticInput!) {
  alertsNrqlConditionStaticCreate(accountId: $accountId, policyId: $policyId, condition: $condition) { id name }
}
"""
UPDATE_CONDITION = """\
mutation UpdateCondition($accountId: Int!, $id: ID!, $condition: AlertsNrqlConditionUpdateStaticInput!) {
  alertsNrqlConditionStaticUpdate(accountId: $accountId, id: $id, condition: $condition) { id name }
}
"""
DOCUMENTS = {"find-policy": FIND_POLICY, "create-policy": CREATE_POLICY, "find-conditions": FIND_CONDITIONS,
             "create-condition": CREATE_CONDITION, "update-condition": UPDATE_CONDITION}


def literal(value: str) -> str:
    """A NRQL string literal (workflow names come from instrumentation and may hold quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _in(values: tuple[str, ...] | list[str]) -> str:
    return "(" + ", ".join(literal(v) for v in values) + ")"


def _where(*clauses: str) -> str:
    kept = [x for x in clauses if x]
    return " WHERE " + " AND ".join(kept) if kept else ""


def threshold_nrql(t: Threshold) -> str:
    layer = f"{c.L_LAYER} = {literal(t.layer)}"
    if t.metric.name == "response_time":
        return (f"SELECT bucketPercentile({c.STEP_DURATION_SECONDS}_bucket, 95) FROM Metric{_where(layer)} "
                f"FACET {c.L_WORKFLOW}, {c.L_LAYER}")
    if t.metric.name == "error_rate":
        count = f"{c.STEP_DURATION_SECONDS}_count"
        return (f"SELECT filter(sum({count}), WHERE {c.L_STATUS} IN {_in(c.FAILED_STATUSES)}) / sum({count}) "
                f"FROM Metric{_where(layer)} FACET {c.L_WORKFLOW}, {c.L_LAYER}")
    agg = "max" if t.metric.higher_is_worse else "min"
    return f"SELECT {agg}({CUSTOM[t.metric.name]}) FROM Metric{_where(layer)} FACET {c.L_LAYER}, {c.L_COMPONENT}"


def _term(operator: str, threshold: float, duration_s: int, occurrences: str, priority: str) -> dict[str, Any]:
    return {"operator": operator, "priority": priority.upper(), "threshold": threshold,
            "thresholdDuration": duration_s, "thresholdOccurrences": occurrences}


def _base(a: Alert) -> dict[str, Any]:
    nr = "{{{{tags.{0}}}}}"
    return {"name": a.name, "enabled": True, "description": templates(a.description, nr),
            "runbookUrl": without_templates(a.runbook_url)}


def condition_for(spec: Spec, a: Alert) -> dict[str, Any] | None:
    """The ``condition`` variable of one alert, or None when New Relic has no equivalent."""
    if a.kind == "threshold" and a.threshold is not None:
        t = a.threshold
        per_window = t.metric.name in ("response_time", "error_rate")
        window = min(seconds(spec.rate_window), MAX_WINDOW_S) if per_window else 60
        held = max(window, -(-seconds(t.for_) // window) * window)
        op = "ABOVE" if t.metric.higher_is_worse else "BELOW"
        return {**_base(a), "nrql": {"query": threshold_nrql(t)},
                "terms": [_term(op, s.threshold, held, "ALL", s.severity) for s in a.severities],
                "signal": {"aggregationWindow": window, "aggregationMethod": "EVENT_FLOW",
                           "aggregationDelay": AGGREGATION_DELAY_S}}
    if a.kind == "slo_burn" and a.slo is not None and a.burn is not None:
        s, b = a.slo, a.burn
        long_s, short_s = seconds(b.long_window), seconds(b.short_window)
        if long_s > MAX_WINDOW_S:
            return None
        if s.workflow is None:
            scope = f"{c.L_WORKFLOW} NOT IN {_in(s.except_workflows)}" if s.except_workflows else ""
        else:
            scope = f"{c.L_WORKFLOW} = {literal(s.workflow)}"
        if s.type == "availability":
            runs = c.WORKFLOW_RUNS_TOTAL
            ratio = f"filter(sum({runs}), WHERE {c.L_STATUS} IN {_in(c.FAILED_STATUSES)}) / sum({runs})"
        else:
            le = float_to_go_string(s.threshold_s or 0.0)
            name = c.WORKFLOW_DURATION_SECONDS
            ratio = f"1 - filter(sum({name}_bucket), WHERE le = {literal(le)}) / sum({name}_count)"
        # The long window as a sliding window that moves by the short one: the long-window ratio, every short window.
        return {**_base(a), "nrql": {"query": f"SELECT {ratio} FROM Metric{_where(scope)} FACET {c.L_WORKFLOW}"},
                "terms": [_term("ABOVE", round(b.factor * s.error_budget, 9), long_s, "AT_LEAST_ONCE",
                                a.severities[0].severity)],
                "signal": {"aggregationWindow": long_s, "slideBy": short_s, "aggregationMethod": "EVENT_FLOW",
                           "aggregationDelay": AGGREGATION_DELAY_S}}
    if a.kind == "absent":
        scope = (f"{c.L_WORKFLOW} = {literal(a.workflow)}" if a.workflow is not None else
                 (f"{c.L_WORKFLOW} NOT IN {_in(spec.named_workflows)}" if spec.named_workflows else ""))
        facet = "" if a.workflow is not None else f" FACET {c.L_WORKFLOW}"
        # Loss of signal, as Prometheus' absent(): no data for ABSENT_FOR opens an incident.
        return {**_base(a), "nrql": {"query": f"SELECT count({c.WORKFLOW_RUNS_TOTAL}) FROM Metric{_where(scope)}"
                                              f"{facet}"},
                "terms": [_term("BELOW", 0, 300, "ALL", a.severities[0].severity)],
                "signal": {"aggregationWindow": 60, "aggregationMethod": "EVENT_FLOW",
                           "aggregationDelay": AGGREGATION_DELAY_S},
                "expiration": {"expirationDuration": seconds(ABSENT_FOR), "openViolationOnExpiration": True,
                               "closeViolationsOnExpiration": False}}
    if a.kind == "regression":
        by = ", ".join(("query", c.L_WORKFLOW, c.L_LAYER, c.L_COMPONENT, c.L_DETECTOR))
        return {**_base(a), "nrql": {"query": f"SELECT max({c.REGRESSION_ACTIVE}) FROM Metric WHERE direction = "
                                              f"'regression' FACET {by}"},
                "terms": [_term("ABOVE_OR_EQUALS", 1, 60, "AT_LEAST_ONCE", a.severities[0].severity)],
                "signal": {"aggregationWindow": 60, "aggregationMethod": "EVENT_FLOW",
                           "aggregationDelay": AGGREGATION_DELAY_S}}
    raise ValueError(f"unknown alert kind {a.kind!r}")


def conditions(spec: Spec) -> list[dict[str, Any]]:
    return [x for a in alerts(spec) if (x := condition_for(spec, a)) is not None]


def policy() -> dict[str, Any]:
    return {"name": c.NEWRELIC_POLICY, "incidentPreference": INCIDENT_PREFERENCE}


def unmapped(spec: Spec) -> list[Unmapped]:
    out = []
    for a in alerts(spec):
        if a.kind == "slo_burn" and a.burn is not None and condition_for(spec, a) is None:
            out.append(Unmapped("New Relic conditions", a.name,
                                f"New Relic's aggregation window is at most 2h; this burn rate's long window is "
                                f"{a.burn.long_window}"))
    out.append(Unmapped("New Relic conditions", "the short window of each burn-rate pair",
                        "a condition has one window: the long window slides by the short one, so the alert does "
                        "not also require the short window to burn (it may last up to one long window longer)"))
    if any(s.min_events > 1 for s in spec.slos):
        out.append(Unmapped("New Relic conditions", "min_events of the SLOs",
                            "a NRQL condition has no minimum-event guard"))
    out.append(Unmapped("New Relic conditions", "label templates in runbook links",
                        "runbookUrl is static: the link keeps the layer and drops var-workflow; the description "
                        "names the workflow ({{tags.workflow}})"))
    return out

"""What every vendor's alerts share: one alert per threshold, SLO burn pair, absent workflow and regression.

Each :class:`Alert` is taken from the Prometheus rule the spec generates (``backend.rules.generate``), so the
name, severities, summary and runbook (dashboard) link are the Prometheus rule's by construction; the vendor
modules only translate the query. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from backend.rules.generate import (
    BURN_ALERTS,
    absent_alert,
    regression_alert,
    seen_absent_alert,
    slo_alerts,
    threshold_alert,
)
from backend.rules.spec import SLO, Spec, Threshold
from exporter import conventions as c

_LABEL = re.compile(r"\{\{\s*\$labels\.(\w+)\s*\}\}")


@dataclass(frozen=True)
class Severity:
    """One severity of an alert: its threshold and the Prometheus rule's summary at it."""

    severity: str  # c.SEVERITY_WARNING | c.SEVERITY_CRITICAL
    threshold: float
    summary: str


@dataclass(frozen=True)
class Burn:
    """One multi-window burn-rate condition of an SLO (SRE Workbook table 5-8)."""

    factor: float
    long_window: str
    short_window: str


@dataclass(frozen=True)
class Alert:
    """One generated alert, vendor-neutral. ``kind``: threshold | slo_burn | absent | regression."""

    kind: str
    key: str  # unique and stable: the vendors' object name is built from it
    prometheus_alert: str  # the Prometheus rule's alertname
    severities: tuple[Severity, ...]
    description: str
    runbook_url: str  # the Prometheus rule's dashboard_url, with its label templates
    tags: tuple[tuple[str, str], ...]
    threshold: Threshold | None = None
    slo: SLO | None = None
    burn: Burn | None = None
    workflow: str | None = None  # an absent alert's named workflow (None: every workflow seen)

    @property
    def name(self) -> str:
        return f"{c.INTEGRATION_NAME_PREFIX}{self.prometheus_alert} · {self.key}"


def templates(text: str, fmt: str) -> str:
    """Rewrite Prometheus' ``{{ $labels.x }}`` with a vendor's template, e.g. ``fmt="{{{{{0}.name}}}}"``."""
    return _LABEL.sub(lambda m: fmt.format(m.group(1)), text)


def without_templates(url: str) -> str:
    """A link with its templated query parameters dropped, for vendors whose runbook URL is static."""
    base, _, query = url.partition("?")
    kept = [p for p in query.split("&") if p and "{{" not in p]
    return base + ("?" + "&".join(kept) if kept else "")


def _threshold(spec: Spec, t: Threshold) -> Alert:
    rules = {sev: threshold_alert(spec, t, sev) for sev in (c.SEVERITY_WARNING, c.SEVERITY_CRITICAL)}
    crit = rules[c.SEVERITY_CRITICAL]
    return Alert(
        kind="threshold", key=f"{t.layer} {t.metric.name}", prometheus_alert=crit["alert"],
        severities=(Severity(c.SEVERITY_WARNING, t.warning, rules[c.SEVERITY_WARNING]["annotations"]["summary"]),
                    Severity(c.SEVERITY_CRITICAL, t.critical, crit["annotations"]["summary"])),
        description=crit["annotations"]["description"], runbook_url=crit["annotations"]["dashboard_url"],
        tags=((c.L_LAYER, t.layer), (c.L_METRIC, t.metric.name)), threshold=t)


def _burns(spec: Spec, s: SLO) -> list[Alert]:
    out = []
    rules = {r["labels"][c.L_SEVERITY]: r for r in slo_alerts(spec, s)}
    for severity, _kind, pairs in BURN_ALERTS:
        rule = rules[severity]
        # The rule's description names all its burn pairs and its event guard; each vendor alert is one pair.
        head = rule["annotations"]["description"].rsplit(") at ", 1)[0]
        for factor, long_w, short_w in pairs:
            out.append(Alert(
                kind="slo_burn", key=f"{s.name} {factor:g}x {long_w}/{short_w}", prometheus_alert=rule["alert"],
                severities=(Severity(severity, factor, rule["annotations"]["summary"]),),
                description=f"{head}) at {factor:g}x over {long_w}/{short_w}.",
                runbook_url=rule["annotations"]["dashboard_url"],
                tags=((c.L_SLO, s.name), (c.L_SEVERITY, severity)), slo=s, burn=Burn(factor, long_w, short_w)))
    return out


def alerts(spec: Spec) -> list[Alert]:
    """Every alert of the spec, in the Prometheus rule file's order."""
    out = [_threshold(spec, t) for t in spec.thresholds]
    for s in spec.slos:
        out += _burns(spec, s)
    absent: list[tuple[str | None, dict[str, Any]]] = [(w, absent_alert(spec, w)) for w in spec.named_workflows]
    if spec.has_defaults:
        absent.append((None, seen_absent_alert(spec)))
    for wf, rule in absent:
        a = rule["annotations"]
        out.append(Alert(kind="absent", key=wf or "every workflow seen", prometheus_alert=rule["alert"],
                         severities=(Severity(rule["labels"][c.L_SEVERITY], 0, a["summary"]),),
                         description=a["description"], runbook_url=a["dashboard_url"],
                         tags=(((c.L_WORKFLOW, wf),) if wf else ()), workflow=wf))
    rule = regression_alert(spec)
    a = rule["annotations"]
    out.append(Alert(kind="regression", key="regression", prometheus_alert=rule["alert"],
                     severities=(Severity(rule["labels"][c.L_SEVERITY], 1, a["summary"]),),
                     description=a["description"], runbook_url=a["dashboard_url"], tags=()))
    return out

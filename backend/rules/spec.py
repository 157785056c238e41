"""The alert spec (``apiVersion: flowscope/v1``) and its loader.

The spec a user writes is kept apart from the model the generators use:
:func:`load_spec` parses YAML, checks ``apiVersion``/``kind``, then maps each
field, so every error names the field it is about::

    alert_rules/spec/flowscope.yaml: thresholds[1].warning: expected a duration like 500ms or 2s, got '5%'

Example spec::

    apiVersion: flowscope/v1
    kind: AlertSpec
    grafana_url: http://localhost:3000
    thresholds:
      - {layer: api, metric: response_time, warning: 500ms, critical: 2000ms}
      - {layer: cache, metric: hit_rate, warning: 80%, critical: 60%}   # lower is worse
    default_slos:   # applied to every workflow that reports runs, without naming any
      - {type: availability, objective: 99%, min_events: 20}
    slos:           # opt-in, per named workflow; replaces the default of the same type for it
      - {workflow: checkout, type: availability, objective: 99.5%, min_events: 20}
      - {workflow: checkout, type: latency, objective: 99%, threshold: 2.5s}

A spec of the first releases (``slos:`` only, every workflow named) reads the same
as before: without ``default_slos`` no objective applies to unnamed workflows.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import yaml

from exporter import conventions as c

from ..errors import SpecError

API_VERSION = "flowscope/v1"
KIND = "AlertSpec"


@dataclass(frozen=True)
class MetricKind:
    """One thresholdable metric: its unit and which way is worse."""

    name: str
    unit: str  # "duration" | "percent"
    higher_is_worse: bool
    alert: str
    title: str


METRICS: dict[str, MetricKind] = {m.name: m for m in (
    MetricKind("response_time", "duration", True, c.ALERT_STEP_LATENCY_HIGH, "p95 step latency"),
    MetricKind("error_rate", "percent", True, c.ALERT_STEP_ERROR_RATE_HIGH, "step error rate"),
    MetricKind("hit_rate", "percent", False, c.ALERT_CACHE_HIT_RATE_LOW, "cache hit rate"),
    MetricKind("memory_usage", "percent", True, c.ALERT_MEMORY_USAGE_HIGH, "memory usage"),
    MetricKind("cpu_usage", "percent", True, c.ALERT_CPU_USAGE_HIGH, "CPU usage"),
)}
SLO_TYPES = ("availability", "latency")


@dataclass(frozen=True)
class Threshold:
    layer: str
    metric: MetricKind
    warning: float  # seconds or a ratio 0..1
    critical: float
    for_: str


@dataclass(frozen=True)
class SLO:
    """One objective: for a named ``workflow``, or (``workflow=None``) the default for every workflow seen.

    A default never names a workflow: its rules aggregate ``by (workflow)`` over
    whatever reports runs, less ``except_workflows`` (those with their own SLO of
    this type).
    """

    workflow: str | None
    type: str  # availability | latency
    objective: float  # ratio, e.g. 0.995
    threshold_s: float | None  # latency SLOs: a run slower than this is a bad event
    min_events: int
    except_workflows: tuple[str, ...] = ()

    @property
    def is_default(self) -> bool:
        return self.workflow is None

    @property
    def name(self) -> str:
        # "default:" cannot collide with a named SLO's "<workflow>-<type>", whatever the workflow is called.
        return f"default:{self.type}" if self.workflow is None else f"{self.workflow}-{self.type}"

    @property
    def error_budget(self) -> float:
        return 1 - self.objective


@dataclass(frozen=True)
class Routing:
    """Alertmanager routing. Secrets are only ever paths to files (``*_file``)."""

    webhook_url: str = "http://127.0.0.1:9464" + c.ALERTS_WEBHOOK_PATH
    webhook_credentials_file: str | None = None  # bearer token file
    webhook_username: str | None = None  # basic auth, with webhook_password_file
    webhook_password_file: str | None = None
    slack: dict[str, str | bool] | None = None
    email: dict[str, str | bool] | None = None
    pagerduty: dict[str, str | bool] | None = None
    group_wait: str = "30s"
    group_interval: str = "5m"
    repeat_interval: str = "4h"


@dataclass(frozen=True)
class Spec:
    thresholds: tuple[Threshold, ...]
    slos: tuple[SLO, ...]  # the defaults (sorted by type) first, then the named ones in spec order
    grafana_url: str
    for_: str
    rate_window: str
    buckets: tuple[float, ...] = field(default=c.DEFAULT_BUCKETS)
    routing: Routing = field(default_factory=Routing)
    #: ``endpoints.no_traffic_for``: how long a documented endpoint may go without a call before
    #: ``FlowscopeEndpointNoTraffic`` fires (a Prometheus duration); None: no such alert.
    endpoint_no_traffic_for: str | None = None

    @property
    def named_workflows(self) -> tuple[str, ...]:
        """Workflows the spec declares by name (their absent-data alert fires even before any run)."""
        return tuple(sorted({s.workflow for s in self.slos if s.workflow is not None}))

    @property
    def has_defaults(self) -> bool:
        return any(s.is_default for s in self.slos)


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_PROM_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)\s*%$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class _Reader:
    """Walks the parsed document, naming each value's path in errors."""

    def __init__(self, source: str | None):
        self.source = source

    def fail(self, path: str, msg: str) -> NoReturn:
        raise SpecError(path, msg, self.source)

    def mapping(self, v: Any, path: str, allowed: AbstractSet[str],
                required: AbstractSet[str] = frozenset()) -> dict[str, Any]:
        if not isinstance(v, dict):
            self.fail(path, f"expected a mapping, got {type(v).__name__}")
        for k in v:
            if k not in allowed:
                self.fail(f"{path}.{k}" if path else str(k), f"unknown field; expected one of {sorted(allowed)}")
        for k in required:
            if k not in v:
                self.fail(f"{path}.{k}" if path else k, "is required")
        return v

    def seq(self, v: Any, path: str) -> list[Any]:
        if v is None:
            return []
        if not isinstance(v, list):
            self.fail(path, f"expected a list, got {type(v).__name__}")
        return v

    def string(self, v: Any, path: str) -> str:
        if not isinstance(v, str) or not v:
            self.fail(path, f"expected a non-empty string, got {v!r}")
        return v

    def duration(self, v: Any, path: str) -> float:
        m = _DURATION.match(str(v).strip()) if isinstance(v, (str, int, float)) else None
        if not m or isinstance(v, (int, float)):
            self.fail(path, f"expected a duration like 500ms or 2s, got {v!r}")
        return float(m.group(1)) * _SECONDS[m.group(2)]

    def percent(self, v: Any, path: str) -> float:
        m = _PERCENT.match(v.strip()) if isinstance(v, str) else None
        if not m:
            self.fail(path, f"expected a percentage like 5% or 99.5%, got {v!r}")
        x = float(m.group(1))
        if not 0 <= x <= 100:
            self.fail(path, f"must be between 0% and 100%, got {v!r}")
        return x / 100

    def prom_duration(self, v: Any, path: str) -> str:
        if not isinstance(v, str) or not _PROM_DURATION.match(v):
            self.fail(path, f"expected a Prometheus duration like 5m, got {v!r}")
        return v


def _threshold(r: _Reader, raw: Any, path: str, default_for: str) -> Threshold:
    d = r.mapping(raw, path, {"layer", "metric", "warning", "critical", "for"}, {"layer", "metric", "warning",
                                                                                 "critical"})
    layer = r.string(d["layer"], f"{path}.layer")
    if layer not in c.LAYERS:
        r.fail(f"{path}.layer", f"must be one of {list(c.LAYERS)}, got {layer!r}")
    metric = METRICS.get(d["metric"])
    if metric is None:
        r.fail(f"{path}.metric", f"must be one of {sorted(METRICS)}, got {d['metric']!r}")
    read = r.duration if metric.unit == "duration" else r.percent
    warning, critical = read(d["warning"], f"{path}.warning"), read(d["critical"], f"{path}.critical")
    if metric.higher_is_worse and not warning < critical:
        r.fail(f"{path}.critical", f"{metric.name}: higher is worse, so critical must be above warning")
    if not metric.higher_is_worse and not warning > critical:
        r.fail(f"{path}.critical", f"{metric.name}: lower is worse, so critical must be below warning")
    for_ = r.prom_duration(d["for"], f"{path}.for") if "for" in d else default_for
    return Threshold(layer, metric, warning, critical, for_)


def _slo(r: _Reader, raw: Any, path: str, buckets: tuple[float, ...], named: bool = True) -> SLO:
    fields = {"type", "objective", "threshold", "min_events"}
    if named:
        d = r.mapping(raw, path, fields | {"workflow"}, {"workflow", "type", "objective"})
        wf = r.string(d["workflow"], f"{path}.workflow")
    else:
        if isinstance(raw, dict) and "workflow" in raw:
            r.fail(f"{path}.workflow", "a default objective applies to every workflow; "
                                       "name a workflow under slos: instead")
        d = r.mapping(raw, path, fields, {"type", "objective"})
        wf = None
    kind = d["type"]
    if kind not in SLO_TYPES:
        r.fail(f"{path}.type", f"must be one of {list(SLO_TYPES)}, got {kind!r}")
    objective = r.percent(d["objective"], f"{path}.objective")
    if not 0 < objective < 1:
        r.fail(f"{path}.objective", "must be strictly between 0% and 100%")
    threshold = None
    if kind == "latency":
        if "threshold" not in d:
            r.fail(f"{path}.threshold", "is required for a latency SLO")
        threshold = r.duration(d["threshold"], f"{path}.threshold")
        if not any(abs(threshold - b) < 1e-9 for b in buckets):
            r.fail(f"{path}.threshold", f"must be a histogram bucket bound (seconds: {list(buckets)}), "
                                        f"got {threshold:g}s")
    elif "threshold" in d:
        r.fail(f"{path}.threshold", "only a latency SLO has a threshold")
    min_events = d.get("min_events", 10)
    if not isinstance(min_events, int) or isinstance(min_events, bool) or min_events < 1:
        r.fail(f"{path}.min_events", f"must be a whole number >= 1, got {min_events!r}")
    return SLO(wf, kind, objective, threshold, min_events)


#: Integration fields per receiver kind: (allowed, required). Secrets only as *_file.
_RECEIVERS = {
    "slack": ({"api_url_file", "channel", "title", "text"}, {"api_url_file", "channel"}),
    "email": ({"to", "from", "smarthost", "auth_username", "auth_password_file", "require_tls"},
              {"to", "from", "smarthost"}),
    "pagerduty": ({"routing_key_file", "severity"}, {"routing_key_file"}),
}
_SECRET_KEYS = {"api_url": "api_url_file", "auth_password": "auth_password_file", "routing_key": "routing_key_file",
                "service_key": "routing_key_file", "credentials": "webhook_credentials_file",
                "password": "webhook_password_file", "webhook_password": "webhook_password_file",
                "token": "webhook_credentials_file"}


def _routing(r: _Reader, raw: Any) -> Routing:
    if raw is None:
        return Routing()
    if isinstance(raw, dict):
        for path_prefix, block in [("routing", raw)] + [(f"routing.{k}", raw[k]) for k in _RECEIVERS
                                                        if isinstance(raw.get(k), dict)]:
            for k in block:
                if k in _SECRET_KEYS:
                    r.fail(f"{path_prefix}.{k}", "secrets are never written into the generated YAML; "
                                                 f"put it in a file and use {_SECRET_KEYS[k]}")
    d = r.mapping(raw, "routing", {"webhook_url", "webhook_credentials_file", "webhook_username",
                                   "webhook_password_file", "slack", "email", "pagerduty", "group_wait",
                                   "group_interval", "repeat_interval"})
    kw: dict[str, Any] = {}
    for k in ("webhook_url", "webhook_credentials_file", "webhook_username", "webhook_password_file"):
        if k in d:
            kw[k] = r.string(d[k], f"routing.{k}")
    if not str(kw.get("webhook_url", "http://")).startswith(("http://", "https://")):
        r.fail("routing.webhook_url", "must be an http(s) URL")
    if ("webhook_username" in kw) != ("webhook_password_file" in kw):
        r.fail("routing.webhook_username", "basic auth needs both webhook_username and webhook_password_file")
    if "webhook_username" in kw and "webhook_credentials_file" in kw:
        r.fail("routing.webhook_credentials_file", "choose bearer (credentials_file) or basic auth, not both")
    for k in ("group_wait", "group_interval", "repeat_interval"):
        if k in d:
            kw[k] = r.prom_duration(d[k], f"routing.{k}")
    for k, (allowed, required) in _RECEIVERS.items():
        if k in d:
            block = r.mapping(d[k], f"routing.{k}", allowed, required)
            kw[k] = {f: (block[f] if isinstance(block[f], bool) else r.string(block[f], f"routing.{k}.{f}"))
                     for f in sorted(block)}
    return Routing(**kw)


def parse_spec(doc: Any, source: str | None = None) -> Spec:
    """Check and map an already-parsed spec document."""
    r = _Reader(source)
    d = r.mapping(doc, "", {"apiVersion", "kind", "grafana_url", "defaults", "buckets", "thresholds",
                            "default_slos", "slos", "routing", "endpoints"}, {"apiVersion", "kind"})
    if d["apiVersion"] != API_VERSION:
        r.fail("apiVersion", f"unsupported version {d['apiVersion']!r}; this Flowscope reads {API_VERSION!r}")
    if d["kind"] != KIND:
        r.fail("kind", f"expected {KIND!r}, got {d['kind']!r}")
    defaults = r.mapping(d.get("defaults") or {}, "defaults", {"for", "rate_window"})
    for_ = r.prom_duration(defaults.get("for", "5m"), "defaults.for")
    rate_window = r.prom_duration(defaults.get("rate_window", "5m"), "defaults.rate_window")
    buckets: tuple[float, ...] = c.DEFAULT_BUCKETS
    if "buckets" in d:
        raw = r.seq(d["buckets"], "buckets")
        buckets = tuple(sorted(r.duration(b, f"buckets[{i}]") for i, b in enumerate(raw)))
    thresholds = tuple(_threshold(r, t, f"thresholds[{i}]", for_) for i, t in enumerate(r.seq(d.get("thresholds"),
                                                                                                "thresholds")))
    seen: dict[tuple[str, str], int] = {}
    for i, t in enumerate(thresholds):
        key = (t.layer, t.metric.name)
        if key in seen:
            r.fail(f"thresholds[{i}]", f"duplicates thresholds[{seen[key]}] ({t.layer} {t.metric.name})")
        seen[key] = i
    slos = tuple(_slo(r, s, f"slos[{i}]", buckets) for i, s in enumerate(r.seq(d.get("slos"), "slos")))
    names: dict[str, int] = {}
    for i, s in enumerate(slos):
        if s.name in names:
            r.fail(f"slos[{i}]", f"duplicates slos[{names[s.name]}] ({s.name})")
        names[s.name] = i
    defaults_raw = r.seq(d.get("default_slos"), "default_slos")
    default_slos = [_slo(r, s, f"default_slos[{i}]", buckets, named=False) for i, s in enumerate(defaults_raw)]
    types: dict[str, int] = {}
    for i, s in enumerate(default_slos):
        if s.type in types:
            r.fail(f"default_slos[{i}]", f"duplicates default_slos[{types[s.type]}] (one default per type: {s.type})")
        types[s.type] = i
    # A named SLO replaces the default of its type for that workflow, so no workflow has two objectives.
    default_slos = [replace(s, except_workflows=tuple(sorted({n.workflow for n in slos
                                                              if n.type == s.type and n.workflow is not None})))
                    for s in sorted(default_slos, key=lambda s: SLO_TYPES.index(s.type))]
    slos = (*default_slos, *slos)
    grafana = d.get("grafana_url", "http://localhost:3000")
    grafana = r.string(grafana, "grafana_url").rstrip("/")
    endpoint_idle = None
    if d.get("endpoints") is not None:
        ep = r.mapping(d["endpoints"], "endpoints", {"no_traffic_for"}, {"no_traffic_for"})
        endpoint_idle = r.prom_duration(ep["no_traffic_for"], "endpoints.no_traffic_for")
    return Spec(thresholds, slos, grafana, for_, rate_window, buckets, _routing(r, d.get("routing")),
                endpoint_no_traffic_for=endpoint_idle)


def load_spec(path: str) -> Spec:
    """Read, parse and check a spec file; every error names the file and the field."""
    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as e:
        raise SpecError("(file)", e.strerror or str(e), path) from None
    except yaml.YAMLError as e:
        raise SpecError("(file)", f"not valid YAML: {e}", path) from None
    return parse_spec(doc, path)

"""Settings: argument > ``FLOWSCOPE_*`` environment variable > YAML file > default.

Every setting is one :class:`Setting`; the README's configuration table is
generated from :data:`SETTINGS` (``flowscope config --markdown``). A bad key
or value raises :class:`~exporter.errors.ConfigError` naming it.

Example::

    cfg = load_config({"port": 9000}, environ={"FLOWSCOPE_LOKI_URL": "http://127.0.0.1:3100"})
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import yaml

from .conventions import ATTRIBUTION_OUTCOME_KEYS, DEFAULT_BUCKETS, DEFAULT_SECRET_KEYS, ROLE_ALL, ROLES
from .errors import ConfigError
from .redact import mask_url

ENV_PREFIX = "FLOWSCOPE_"


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true/false, got {v!r}")


def _pos_int(v: Any) -> int:
    n = int(v)
    if n <= 0:
        raise ValueError(f"must be > 0, got {n}")
    return n


def _port(v: Any) -> int:
    n = int(v)
    if not 0 <= n <= 65535:
        raise ValueError(f"must be a TCP port 0..65535, got {n}")
    return n


def _pos_float(v: Any) -> float:
    x = float(v)
    if not x > 0:
        raise ValueError(f"must be > 0, got {x}")
    return x


def _buckets(v: Any) -> tuple[float, ...]:
    items = v if isinstance(v, (list, tuple)) else str(v).split(",")
    out = tuple(sorted(float(x) for x in items))
    if not out or len(set(out)) != len(out) or out[0] <= 0:
        raise ValueError(f"must be distinct positive seconds, got {v!r}")
    return out


def _choice(*options: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        s = str(v)
        if s not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {s!r}")
        return s
    return parse


def _words(v: Any) -> tuple[str, ...]:
    items = v if isinstance(v, (list, tuple)) else str(v).split(",")
    return tuple(w.strip() for w in items if str(w).strip())


def _origins(v: Any) -> tuple[str, ...]:
    """Browser origins: ``*`` alone, or ``scheme://host[:port]`` each (no path: a browser's Origin has none)."""
    out = tuple(w.rstrip("/") for w in _words(v))
    if "*" in out and len(out) > 1:
        raise ValueError("`*` allows every origin: list origins or give `*` alone")
    for o in out:
        if o != "*" and (not o.startswith(("http://", "https://")) or "/" in o.split("://", 1)[1]):
            raise ValueError(f"an origin is scheme://host[:port], got {o!r}")
    return out


def _season(v: Any) -> int:
    if isinstance(v, str) and v.strip().lower() == "auto":
        return -1
    n = int(v)
    if n < -1:
        raise ValueError("expected auto, 0 (none) or a period in seconds")
    return n


def _ratio(v: Any) -> float:
    x = float(v)
    if not 0 <= x < 1:
        raise ValueError("expected a ratio between 0 and 1")
    return x


def _opt_str(v: Any) -> str | None:
    return None if v is None or str(v) == "" else str(v)


def _forward(v: Any) -> tuple[Any, ...]:
    from .forward import parse_destinations  # the forwarder's vocabulary (exporter/forward.py), loaded when used

    return parse_destinations(v)


def _show_forward(v: Any) -> Any:
    from .forward import public_destinations

    return public_destinations(v)


def _opt_pos_int(v: Any) -> int | None:
    return None if v is None or str(v).strip() in ("", "auto") else _pos_int(v)


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    secret: bool = False
    #: How ``Config.public`` shows a structured value (secrets inside masked); None: as is.
    show: Callable[[Any], Any] | None = None

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "127.0.0.1", "Address the HTTP server binds."),
    Setting("port", _port, 9464, "Port of the HTTP server (ingest, /metrics, backend API)."),
    Setting("service_name", str, "flowscope", "Service name stamped on SDK spans and log streams."),
    Setting("ingest_token", _opt_str, None, "If set, ingest requires `Authorization: Bearer <token>`.", True),
    Setting("max_body_bytes", _pos_int, 8 * 1024 * 1024, "Largest accepted request body, after decompression."),
    Setting("browser_origins", _origins, (),
            "Origins (`https://shop.example.com`) whose pages may post console errors and user actions to "
            "`/api/v1/logs/browser`, comma-separated; `*`: any origin, without credentials. Unset: no browser may."),
    Setting("browser_max_body_bytes", _pos_int, 64 * 1024,
            "Largest browser log request (`/api/v1/logs/browser`), after decompression."),
    Setting("threads", _pos_int, 8, "Threads of each HTTP worker process: requests one worker runs at once."),
    Setting("workers", _opt_pos_int, None,
            "HTTP worker processes of `flowscope serve`; past one, the serving process aggregates (metrics, run store, "
            "Loki) and the workers decode and serve. `auto`: the cores less two (aggregator and writer), one below "
            "four cores (see Serving in the README)."),
    Setting("connection_limit", _opt_pos_int, None,
            "Most open client connections; at the limit a new one closes the longest-idle one. Unset: "
            "1000, or fewer if the open-files limit (less a reserve) allows fewer."),
    Setting("idle_timeout_s", _pos_float, 75.0,
            "Seconds a connection stays open without a byte either way (idle, a stalled body, an unread response)."),
    Setting("header_timeout_s", _pos_float, 10.0,
            "Seconds a client has to send a complete request header (from connect, or from its first byte)."),
    Setting("series_limit", _pos_int, 10_000, "Series cap per metric; past it labels become `__overflow__`."),
    Setting("buckets", _buckets, DEFAULT_BUCKETS, "Latency histogram bucket bounds in seconds, comma-separated."),
    Setting("trace_timeout_s", _pos_float, 30.0,
            "How long OTLP spans wait for their root span to name the workflow."),
    Setting("loki_url", _opt_str, None, "Loki base URL; unset means log streams are not pushed."),
    Setting("loki_tenant", _opt_str, None, "Loki tenant, sent as `X-Scope-OrgID`."),
    Setting("loki_username", _opt_str, None, "Loki basic-auth user."),
    Setting("loki_password", _opt_str, None, "Loki basic-auth password.", True),
    Setting("loki_token", _opt_str, None, "Loki bearer token.", True),
    Setting("loki_encoding", _choice("json", "protobuf"), "json", "Push body: gzip JSON or snappy protobuf."),
    Setting("loki_batch_lines", _pos_int, 1000, "Lines per Loki push."),
    Setting("loki_batch_wait_s", _pos_float, 1.0, "Longest wait before a partial batch is pushed."),
    Setting("loki_queue_lines", _pos_int, 100_000, "Queue bound; lines past it are dropped and counted."),
    Setting("loki_queue_policy", _choice("drop_newest", "drop_oldest"), "drop_newest",
            "On a full Loki queue, drop the lines offered (`drop_newest`) or the oldest queued (`drop_oldest`); "
            "counted as `queue_full` either way."),
    Setting("loki_retry_deadline_s", _pos_float, 300.0, "How long one batch is retried before it is dropped."),
    Setting("forward_destinations", _forward, (),
            "Names of OTLP/HTTP receivers every trace `/v1/traces` accepts is forwarded to, unchanged, comma-separated "
            "(`datadog,newrelic`). Each name's URL and headers come from `FLOWSCOPE_FORWARD_<NAME>_URL`, "
            "`FLOWSCOPE_FORWARD_<NAME>_HEADERS` and `FLOWSCOPE_FORWARD_<NAME>_HEADERS_FILE` (see Forwarding traces).",
            show=_show_forward),
    Setting("forward_queue_bytes", _pos_int, 64 * 1024 * 1024,
            "Queue bound per forward destination, in body bytes; requests past it are dropped and counted."),
    Setting("forward_compression", _choice("gzip", "none"), "gzip", "Body compression of forwarded requests."),
    Setting("forward_timeout_s", _pos_float, 10.0, "Seconds one forwarded request may take to be answered."),
    Setting("forward_retry_deadline_s", _pos_float, 300.0,
            "How long a forwarded request is retried (408, 429, 5xx, connection errors) before it is dropped."),
    Setting("sdk_mode", _choice("inprocess", "remote"), "remote",
            "The SDK sends spans to a Flowscope server (`remote`, the default: no files, no server in the app) or "
            "into a pipeline in the app's own process (`inprocess`, needs `flowscope[server]`)."),
    Setting("sdk_endpoint", str, "http://127.0.0.1:9464", "Base URL of the Flowscope server the SDK sends to."),
    Setting("sdk_queue_size", _pos_int, 50_000, "Remote SDK queue bound; spans past it are dropped and counted."),
    Setting("demo_rate", _pos_float, 20.0, "Workflow runs per second generated by `--demo`."),
    Setting("database_url", str, "sqlite:///var/flowscope.db",
            "SQLAlchemy URL of the store (runs, errors, profiles, alerts); `postgresql://user@host/db` for "
            "PostgreSQL."),
    Setting("role", _choice(*ROLES), ROLE_ALL,
            "What `flowscope serve` serves: `ingest` (OTLP, native spans, profiles, /metrics, health; no backend API, "
            "pages or scheduled work), `backend` (API, pages, webhook and scheduled work; refuses ingest) or `all`."),
    Setting("lease_retry_s", _pos_float, 5.0,
            "Replicas sharing a PostgreSQL store: seconds between tries at a duty's lease (retention sweep, "
            "detection) this replica does not hold, and between checks of one it holds."),
    Setting("store_connect_timeout_s", _pos_float, 60.0,
            "How long `flowscope serve` retries an unreachable store at start-up (backoff, one log line per "
            "attempt) before it exits with an error."),
    Setting("run_store", _bool, True, "Keep every finished run (spans, errors, state, profiles) for replay."),
    Setting("store_writer", _choice("process", "thread"), "process",
            "Where the run store is written: a writer process of its own (`process`: decoding and storing do not "
            "share one GIL) or a thread of the serving process (`thread`; always for an in-memory SQLite store)."),
    Setting("run_retention_s", _pos_float, 30 * 86400.0, "How long runs are kept; a sweep deletes older ones."),
    Setting("state_max_bytes", _pos_int, 16_384, "Cap on one state snapshot (JSON); larger ones keep what fits "
            "plus a truncation marker."),
    Setting("redact_keys", _words, DEFAULT_SECRET_KEYS, "Key fragments whose values are redacted before anything "
            "is stored or pushed to Loki, comma-separated."),
    Setting("profile_workflows", _words, (), "Workflows the SDK's sampling profiler profiles (`*`: all)."),
    Setting("profile_hz", _pos_float, 100.0, "Sampling rate of the SDK's profiler."),
    Setting("memory_profile_workflows", _words, (),
            "Workflows whose runs the SDK's profiler may trace with tracemalloc (`*`: all), within the budget."),
    Setting("memory_profile_budget", _ratio, 0.02,
            "Share of the process's CPU time the SDK's memory profiler may spend tracing runs (bounds its "
            "slowdown; 0: off)."),
    Setting("memory_step_growth_bytes", _pos_int, 10 * 1024 * 1024,
            "The run page flags a step whose memory grew by more than this many bytes."),
    Setting("slow_query_ms", _pos_float, 100.0,
            "A SQL statement at least this slow is flagged `slow_query` by the SDK's query instrumentation (the "
            "shipped alert spec's database warning threshold)."),
    Setting("n_plus_one_threshold", _pos_int, 10,
            "Runs of one normalised SQL statement in one run that count as an N+1 pattern."),
    Setting("attribution_outcome_keys", _words, ATTRIBUTION_OUTCOME_KEYS,
            "Attribute keys attribution never tests as causes (how a span ended, not why), comma-separated; "
            "`prefix.*` matches a prefix. The API's `outcome_keys=` overrides it per query."),
    Setting("webhook_token", _opt_str, None, "If set, the alert webhook requires `Authorization: Bearer <token>`.",
            True),
    Setting("webhook_username", _opt_str, None, "If set, the alert webhook requires basic auth with this user."),
    Setting("webhook_password", _opt_str, None, "Password for `webhook_username`.", True),
    Setting("grafana_url", _opt_str, None, "Grafana base URL for `dashboards push` and the provisioning endpoint."),
    Setting("grafana_token", _opt_str, None, "Grafana service-account token (sent only as a bearer header).", True),
    Setting("grafana_prometheus_url", str, "http://prometheus:9090",
            "The Prometheus URL Grafana's provisioned datasource points at."),
    Setting("grafana_loki_url", str, "http://loki:3100", "The Loki URL Grafana's provisioned datasource points at."),
    Setting("public_url", str, "http://localhost:9464", "This backend's URL as browsers reach it (run-page links)."),
    Setting("admin_token", _opt_str, None,
            "If set, admin endpoints (provisioning) require it as a bearer token; unset, only loopback may call them.",
            True),
    Setting("detect_prometheus_url", _opt_str, None,
            "Prometheus the backend reads for scheduled regression detection; unset, detection is off."),
    Setting("detect_queries_file", _opt_str, None,
            "YAML list of {name, promql, higher_is_better} for scheduled detection; unset: the default series."),
    Setting("detect_interval_s", _pos_float, 300.0, "Seconds between scheduled detection runs (never overlapping)."),
    Setting("detect_since_s", _pos_int, 7 * 86400, "How far back each detection run looks, in seconds."),
    Setting("detect_season_s", _season, -1,
            "Seasonal period removed before detection, in seconds: `auto` (-1, the default) finds each series' own "
            "(minutes to a week), 0 removes none; needs three cycles of data to apply."),
    Setting("detect_min_effect", _ratio, 0.05,
            "Smallest relative change detection reports (0.05 = 5 %); a query may set its own `min_effect`."),
    Setting("detect_alpha", _ratio, 0.01, "Significance level of one change, before the FDR across series."),
    Setting("detect_min_segment", _pos_int, 5, "Points on each side of a detected change, at least."),
    Setting("detect_max_changes", _pos_int, 20, "Changes reported per series, at most."),
    Setting("detect_step_s", _pos_int, 300, "query_range step of detection runs, in seconds."),
    Setting("endpoints_window_s", _pos_int, 7 * 86400,
            "Seconds of server spans the endpoint gauges read (`flowscope_endpoint_*`): an endpoint not called in "
            "them reads as last called at the window's start (or its registration, if later)."),
    Setting("endpoints_refresh_s", _pos_float, 60.0,
            "Seconds a scrape reuses the endpoint gauges before reading the store again."),
    Setting("log_level", _choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO", "Log level of the process."),
)
_BY_NAME = {s.name: s for s in SETTINGS}


@dataclass(frozen=True, slots=True)
class Config:
    host: str
    port: int
    service_name: str
    ingest_token: str | None
    max_body_bytes: int
    browser_origins: tuple[str, ...]
    browser_max_body_bytes: int
    threads: int
    workers: int | None
    connection_limit: int | None
    idle_timeout_s: float
    header_timeout_s: float
    series_limit: int
    buckets: tuple[float, ...]
    trace_timeout_s: float
    loki_url: str | None
    loki_tenant: str | None
    loki_username: str | None
    loki_password: str | None
    loki_token: str | None
    loki_encoding: str
    loki_batch_lines: int
    loki_batch_wait_s: float
    loki_queue_lines: int
    loki_queue_policy: str
    loki_retry_deadline_s: float
    forward_destinations: tuple[Any, ...]
    forward_queue_bytes: int
    forward_compression: str
    forward_timeout_s: float
    forward_retry_deadline_s: float
    sdk_mode: str
    sdk_endpoint: str
    sdk_queue_size: int
    demo_rate: float
    database_url: str
    role: str
    lease_retry_s: float
    store_connect_timeout_s: float
    run_store: bool
    store_writer: str
    run_retention_s: float
    state_max_bytes: int
    redact_keys: tuple[str, ...]
    profile_workflows: tuple[str, ...]
    profile_hz: float
    memory_profile_workflows: tuple[str, ...]
    memory_profile_budget: float
    memory_step_growth_bytes: int
    slow_query_ms: float
    n_plus_one_threshold: int
    attribution_outcome_keys: tuple[str, ...]
    webhook_token: str | None
    webhook_username: str | None
    webhook_password: str | None
    grafana_url: str | None
    grafana_token: str | None
    grafana_prometheus_url: str
    grafana_loki_url: str
    public_url: str
    admin_token: str | None
    detect_prometheus_url: str | None
    detect_queries_file: str | None
    detect_interval_s: float
    detect_since_s: int
    detect_season_s: int
    detect_min_effect: float
    detect_alpha: float
    detect_min_segment: int
    detect_max_changes: int
    detect_step_s: int
    endpoints_window_s: int
    endpoints_refresh_s: float
    log_level: str

    def replace(self, **changes: Any) -> Config:
        return load_config(changes, environ={}, base=self)

    def public(self) -> dict[str, Any]:
        """Settings with secrets masked (and URL passwords, ``mask_url``), for logs and the health endpoint."""
        out = {}
        for s in SETTINGS:
            v = getattr(self, s.name)
            out[s.name] = "***" if s.secret and v else s.show(v) if s.show else mask_url(v) if isinstance(v, str) else v
        return out


assert [f.name for f in fields(Config)] == [s.name for s in SETTINGS]


def _parse(setting: Setting, value: Any, source: str) -> Any:
    try:
        return setting.parse(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: invalid value for {setting.name}: {e}") from None


def load_config(args: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                file: str | None = None, base: Config | None = None) -> Config:
    """Resolve every setting. ``file`` defaults to ``$FLOWSCOPE_CONFIG``; ``None`` args are ignored."""
    environ = os.environ if environ is None else environ
    values = {s.name: (getattr(base, s.name) if base else s.default) for s in SETTINGS}
    file = file or environ.get(ENV_PREFIX + "CONFIG")
    if file:
        try:
            with open(file, encoding="utf-8") as fh:
                doc = yaml.safe_load(fh) or {}
        except OSError as e:
            raise ConfigError(f"config file {file}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {file}: not valid YAML: {e}") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"config file {file}: must be a mapping of setting: value")
        for k, v in doc.items():
            if k not in _BY_NAME:
                raise ConfigError(f"config file {file}: unknown setting {k!r}")
            values[k] = _parse(_BY_NAME[k], v, f"config file {file}")
    for s in SETTINGS:
        if s.env in environ:
            values[s.name] = _parse(s, environ[s.env], f"environment {s.env}")
    for k, v in (args or {}).items():
        if v is None:
            continue
        if k not in _BY_NAME:
            raise ConfigError(f"unknown setting {k!r}")
        values[k] = _parse(_BY_NAME[k], v, f"argument --{k.replace('_', '-')}")
    if not str(values["sdk_endpoint"]).startswith(("http://", "https://")):
        raise ConfigError(f"sdk_endpoint must be an http:// or https:// URL, got {values['sdk_endpoint']!r}")
    if values["forward_destinations"]:  # each destination's URL and headers (secrets) from the environment
        from .forward import resolve_destinations

        values["forward_destinations"] = resolve_destinations(values["forward_destinations"], environ)
    return Config(**values)


def markdown_table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for s in SETTINGS:
        d = s.default
        d = ",".join(str(x) for x in d) if isinstance(d, tuple) else d
        shown = "(unset)" if d is None else "(none)" if d == "" else f"`{d}`"
        rows.append(f"| `{s.env}` | {shown} | {s.help} |")
    rows.append("| `FLOWSCOPE_CONFIG` | (unset) "
                "| Path of a YAML file with any of the settings above (lower-case keys). |")
    return "\n".join(rows)

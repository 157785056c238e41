"""How the Datadog Agent and New Relic read Flowscope's ``/metrics``. Pure: names from the conventions.

Datadog: the Agent's ``openmetrics`` check (the V2 implementation, ``openmetrics_endpoint``) with every
histogram's buckets sent as a Datadog distribution (``histogram_buckets_as_distributions``), so percentiles
are computed from the buckets, and ``_count``/``_sum`` as counts beside it
(``collect_counters_with_distributions``). It asks for the Prometheus text format (``use_latest_spec:
false``), which carries no exemplars.

New Relic: a Prometheus server in agent mode that scrapes Flowscope and remote-writes to New Relic's
Prometheus endpoint, the license key read from a file. ``send_exemplars: false`` keeps it exemplar-free.

    datadog_openmetrics_conf("http://flowscope:9464")   # the conf.d YAML document, as a dict
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from exporter import conventions as c


@dataclass(frozen=True)
class ScrapedMetric:
    """One metric family as ``/metrics`` exposes it, and its type there."""

    name: str  # the exposed name, counters with their _total
    kind: str  # counter | gauge | histogram

    @property
    def family(self) -> str:
        """The family name a Prometheus text parser reports (prometheus_client drops a counter's ``_total``)."""
        return self.name[:-6] if self.kind == "counter" and self.name.endswith("_total") else self.name

    @property
    def datadog(self) -> str:
        """The metric's Datadog name: the namespace, then the family without its ``flowscope_`` prefix."""
        return f"{c.DATADOG_NAMESPACE}.{self.short}"

    @property
    def short(self) -> str:
        return self.family.removeprefix("flowscope_")


#: What the integrations scrape: the workflow metrics the alerts and dashboards read, and the
#: exporter's own health. Datadog bills custom metrics per name and tag set, so the list is explicit.
METRICS = (
    ScrapedMetric(c.WORKFLOW_RUNS_TOTAL, "counter"),
    ScrapedMetric(c.WORKFLOW_DURATION_SECONDS, "histogram"),
    ScrapedMetric(c.STEP_DURATION_SECONDS, "histogram"),
    ScrapedMetric(c.STEP_ERRORS_TOTAL, "counter"),
    ScrapedMetric(c.WORKFLOWS_IN_PROGRESS, "gauge"),
    ScrapedMetric(c.PROFILE_CPU_SECONDS_TOTAL, "counter"),
    ScrapedMetric(c.QUERY_PATTERNS_TOTAL, "counter"),
    ScrapedMetric(c.REGRESSION_ACTIVE, "gauge"),
    ScrapedMetric(c.REGRESSION_RELATIVE_CHANGE, "gauge"),
    ScrapedMetric(c.CUSTOM_HIT_RATE, "gauge"),
    ScrapedMetric(c.CUSTOM_MEMORY_USAGE, "gauge"),
    ScrapedMetric(c.CUSTOM_CPU_USAGE, "gauge"),
    ScrapedMetric(c.SPANS_RECEIVED_TOTAL, "counter"),
    ScrapedMetric(c.SPANS_REJECTED_TOTAL, "counter"),
    ScrapedMetric(c.SERIES_OVERFLOW_TOTAL, "counter"),
    ScrapedMetric(c.RUN_STORE_DROPPED_TOTAL, "counter"),
    # the endpoint inventory's gauges (backend/endpoints/metrics.py): never-called endpoints, calls, undocumented
    ScrapedMetric(c.ENDPOINT_LAST_CALL_TIMESTAMP, "gauge"),
    ScrapedMetric(c.ENDPOINT_CALLS, "gauge"),
    ScrapedMetric(c.ENDPOINTS_UNDOCUMENTED, "gauge"),
)
BY_NAME = {m.name: m for m in METRICS}

#: Where the reference deployment (docker-compose.yml) serves /metrics.
DEFAULT_TARGET = "http://flowscope:9464"
SCRAPE_INTERVAL_S = 15
NEWRELIC_REMOTE_WRITE = "https://metric-api.newrelic.com/prometheus/v1/write?prometheus_server=flowscope"
NEWRELIC_LICENSE_KEY_FILE = "/etc/prometheus/secrets/newrelic_license_key"


def dd(name: str, suffix: str = "") -> str:
    """The Datadog name of an exposed metric (``suffix``: ``.count``/``.sum`` of histograms and counters)."""
    return BY_NAME[name].datadog + suffix


def datadog_openmetrics_conf(target: str = DEFAULT_TARGET) -> dict[str, Any]:
    """``conf.d/openmetrics.d/conf.yaml`` for the Datadog Agent."""
    return {
        "init_config": {},
        "instances": [{
            "openmetrics_endpoint": target.rstrip("/") + c.METRICS_PATH,
            "namespace": c.DATADOG_NAMESPACE,
            # exposed family → Datadog name under the namespace; counters are named without _total
            "metrics": [{m.family: m.short} for m in METRICS],
            "histogram_buckets_as_distributions": True,
            "collect_counters_with_distributions": True,
            "use_latest_spec": False,  # the Prometheus text format: no exemplars
            "min_collection_interval": SCRAPE_INTERVAL_S,
            "tags": ["source:flowscope"],
        }],
    }


def newrelic_prometheus_agent(target: str = DEFAULT_TARGET) -> dict[str, Any]:
    """A Prometheus configuration for ``prometheus --agent`` that forwards Flowscope's metrics to New Relic."""
    url = urlsplit(target)
    keep = "|".join(m.name for m in METRICS)
    return {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s"},
        "scrape_configs": [{
            "job_name": "flowscope",
            "scheme": url.scheme,
            "metrics_path": url.path.rstrip("/") + c.METRICS_PATH,
            "static_configs": [{"targets": [url.netloc]}],
            # the same families the Datadog check takes; a histogram's series carry its name as a prefix
            "metric_relabel_configs": [{"source_labels": ["__name__"], "action": "keep",
                                        "regex": f"({keep})(_bucket|_count|_sum)?"}],
        }],
        "remote_write": [{
            "url": NEWRELIC_REMOTE_WRITE,
            "authorization": {"credentials_file": NEWRELIC_LICENSE_KEY_FILE},
            "send_exemplars": False,
        }],
    }

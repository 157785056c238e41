"""``POST /api/v1/provision/dashboards``: push the dashboards and datasources to Grafana now."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response

from exporter.web import HttpError

from .admin import require_admin
from .dashboards.build import dashboards
from .ext import current_flowscope
from .provision import GrafanaConfig, GrafanaProvisioner, ProvisionError
from .rules.spec import load_spec

PROVISION_PATH = "/api/v1/provision/dashboards"
#: The alert spec the dashboards are built from.
SPEC_PATH = "alert_rules/spec/flowscope.yaml"

bp = Blueprint("provision", __name__)


def grafana_config(cfg) -> GrafanaConfig:
    return GrafanaConfig(url=cfg.grafana_url, token=cfg.grafana_token, prometheus_url=cfg.grafana_prometheus_url,
                         loki_url=cfg.grafana_loki_url, backend_url=cfg.public_url)


@bp.post(PROVISION_PATH)
def provision():
    cfg = current_flowscope().config
    require_admin(cfg, "provisioning")
    if not cfg.grafana_url:
        raise HttpError(409, "grafana_not_configured", "set FLOWSCOPE_GRAFANA_URL (and FLOWSCOPE_GRAFANA_TOKEN)")
    try:
        report = GrafanaProvisioner(grafana_config(cfg)).provision(dashboards(load_spec(SPEC_PATH)))
    except ProvisionError as e:
        raise HttpError(502, "grafana_error", str(e)) from None
    return Response(orjson.dumps(report), mimetype="application/json")

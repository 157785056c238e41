"""The Flask app factory: exporter blueprint + backend blueprints, JSON errors everywhere.

Example::

    app = create_app()                      # config from FLOWSCOPE_* / defaults
    app = create_app(exporter=my_exporter)  # tests: a fresh exporter each

As Flask's tutorial app (flaskr) is laid out: every blueprint and its views are defined at module level
(``alerts.bp``, ``runs.api.bp``, ...) and registered here; what they need (the exporter, the alert store,
the regression service) is one :class:`~backend.ext.Flowscope` object, bound here and read by every view
through :func:`backend.ext.flowscope`. The pages' and responses' data are built by plain functions in
service modules beside the views (``runs/service.py``, ``runs/run_page.py``, ``runs/overview.py``,
``analysis/service.py``).

``create_app`` starts no thread: :func:`services` lists what the app needs running (the exporter it
built, the detection schedule), for the process's owner to start and stop.

The exporter's ``role`` (``FLOWSCOPE_ROLE``) decides what the app serves: ``all`` (the default) everything;
``ingest`` only the exporter's routes (ingest, /metrics, health: no backend API, no pages, no scheduled work);
``backend`` everything but ingest (the exporter's blueprint refuses it). Scheduled detection runs under the
``detection`` lease (:mod:`exporter.lease`), so replicas sharing a PostgreSQL store run it once.
"""

from __future__ import annotations

from flask import Flask, request
from werkzeug.exceptions import HTTPException

from exporter import conventions as c
from exporter.config import load_config
from exporter.runtime import Exporter, Service
from exporter.web import HttpError, error_response

from . import alerts, openapi, provision_api
from .analysis import api as errors_api
from .endpoints import api as endpoints_api
from .endpoints.metrics import init_metrics as init_endpoint_metrics
from .ext import Flowscope, current_flowscope
from .logs import api as logs_api
from .provision import GrafanaProvisioner
from .provision_api import grafana_config
from .regression import api as regressions_api
from .regression.analyze import DEFAULT_QUERIES, Settings
from .regression.service import RegressionService, grafana_annotator
from .regression.sources import PrometheusSource, load_queries
from .reports import api as reports_api
from .runs import api as runs_api
from .runs import pages
from .store import AlertStore

#: The backend's blueprints, whose filters and path parameters are checked for NUL before their views run.
BACKEND_BLUEPRINTS = tuple(bp.name for bp in (alerts.bp, provision_api.bp, runs_api.bp, errors_api.bp,
                                              regressions_api.bp, pages.bp, logs_api.bp,
                                              reports_api.bp, endpoints_api.bp))


def _regression_service(ex: Exporter, store: AlertStore) -> RegressionService:
    """Detection from config: Prometheus to read, queries, schedule inputs, Grafana annotations if configured."""
    cfg = ex.config
    annotate = grafana_annotator(GrafanaProvisioner(grafana_config(cfg))) if cfg.grafana_url else None
    source = PrometheusSource(cfg.detect_prometheus_url) if cfg.detect_prometheus_url else None
    queries = load_queries(cfg.detect_queries_file) if cfg.detect_queries_file else DEFAULT_QUERIES
    return RegressionService(store.engine, ex.store, source, since_s=cfg.detect_since_s, step_s=cfg.detect_step_s,
                             annotate=annotate, season_s=cfg.detect_season_s, queries=queries,
                             settings=Settings(alpha=cfg.detect_alpha, min_effect=cfg.detect_min_effect,
                                               min_segment=cfg.detect_min_segment,
                                               max_changes=cfg.detect_max_changes).check())


def services(app: Flask) -> list[Service]:
    """What ``app`` needs running beside it, in start order, for the owner of the process to start and
    stop (:class:`~exporter.runtime.Lifecycle`): the exporter, when :func:`create_app` built it, and the
    detection schedule, when a Prometheus is configured and the role is not ``ingest`` (each turn runs only
    while this process holds the ``detection`` lease).

    :func:`create_app` starts no thread, so tests that build the app leave none behind.
    """
    return list(current_flowscope(app).services)


def _no_nul_in_backend_parameters() -> None:
    """PostgreSQL refuses NUL in text: a backend filter or path parameter holding one is a 400, not a 500."""
    if request.blueprint not in BACKEND_BLUEPRINTS:
        return
    for name, value in (*request.args.items(multi=True), *(request.view_args or {}).items()):
        if isinstance(value, str) and "\x00" in value:
            raise HttpError(400, "invalid_query", f"{name} must not contain NUL", name)


def _flowscope_http(e: HttpError):
    return error_response(e.status, e.code, e.message, e.field, e.headers)


def _http(e: HTTPException):
    if e.code == 404 and current_flowscope().config.role == c.ROLE_INGEST:
        return error_response(404, "not_found", f"{request.path[:200]} is not served here: this server's role is "
                              f"{c.ROLE_INGEST} (FLOWSCOPE_ROLE), which serves ingest, /metrics and health; the "
                              f"backend API and pages are on replicas whose role is {c.ROLE_BACKEND} or {c.ROLE_ALL}")
    return error_response(e.code or 500, (e.name or "error").lower().replace(" ", "_"), e.description or e.name)


def create_app(exporter: Exporter | None = None, test_config: dict | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(JSON_SORT_KEYS=False)
    if test_config:
        app.config.update(test_config)
    owned: list[Service] = []
    if exporter is None:  # built here, so started and stopped through services(app)
        ex = Exporter(load_config())
        owned.append(Service("exporter", ex.start, ex.close))
    else:
        ex = exporter
    backend = ex.config.role != c.ROLE_INGEST
    alert_store = AlertStore(app.config.get("DATABASE_URL") or ex.db)
    regressions = _regression_service(ex, alert_store)
    if ex.config.detect_prometheus_url and backend:
        interval = ex.config.detect_interval_s
        regressions.lease = ex.leases.lease(c.DUTY_DETECTION)  # contended only by replicas that can detect
        owned.append(Service("detection", lambda: regressions.start(interval), regressions.stop))
    # binds the one extension object, and registers the exporter's blueprint (ingest, /metrics, health)
    Flowscope(ex, alert_store, regressions, owned).init_app(app)
    if backend:
        app.register_blueprint(alerts.bp)
        app.register_blueprint(provision_api.bp)
        app.register_blueprint(runs_api.bp)
        app.register_blueprint(pages.bp)
        app.register_blueprint(errors_api.bp)
        app.register_blueprint(regressions_api.bp)
        app.register_blueprint(logs_api.bp)
        app.register_blueprint(reports_api.bp)
        app.register_blueprint(endpoints_api.bp)
        init_endpoint_metrics(ex)  # the inventory's gauges on /metrics: the dashboard row and the no-traffic alert
        app.register_blueprint(openapi.bp)
    app.before_request(_no_nul_in_backend_parameters)
    app.register_error_handler(HttpError, _flowscope_http)
    app.register_error_handler(HTTPException, _http)
    return app

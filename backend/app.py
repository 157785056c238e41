"""The Flask app factory: exporter blueprint + backend blueprints, JSON errors everywhere.

Example::

    app = create_app()                      # config from FLOWSCOPE_* / defaults
    app = create_app(exporter=my_exporter)  # tests: a fresh exporter each

``create_app`` starts no thread: :func:`services` lists what the app needs running (the exporter it
built, the detection schedule), for the process's owner to start and stop.
"""

from __future__ import annotations

import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from exporter import conventions as c
from exporter.config import load_config
from exporter.http import create_blueprint
from exporter.runtime import Exporter, Service
from exporter.web import HttpError, error_response

from .alerts import create_blueprint as alerts_blueprint
from .analysis.api import create_blueprint as errors_blueprint
from .openapi import openapi_document
from .provision import GrafanaProvisioner
from .provision_api import create_blueprint as provision_blueprint
from .provision_api import grafana_config
from .regression.analyze import DEFAULT_QUERIES, Settings
from .regression.api import create_blueprint as regressions_blueprint
from .regression.service import RegressionService, grafana_annotator
from .regression.sources import PrometheusSource, load_queries
from .runs.api import create_blueprint as runs_blueprint
from .runs.pages import create_blueprint as pages_blueprint
from .store import AlertStore

BACKEND_BLUEPRINTS = ("alerts", "provision", "runs", "errors", "regressions", "pages")


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
    detection schedule, when a Prometheus is configured.

    :func:`create_app` starts no thread, so tests that build the app leave none behind.
    """
    return list(app.extensions["flowscope_services"])


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
    app.extensions["flowscope"] = ex
    app.register_blueprint(create_blueprint())
    store = AlertStore(app.config.get("DATABASE_URL") or ex.db)
    app.extensions["flowscope_alerts"] = store
    app.register_blueprint(alerts_blueprint(store))
    app.register_blueprint(provision_blueprint())
    app.register_blueprint(runs_blueprint())
    app.register_blueprint(pages_blueprint())
    app.register_blueprint(errors_blueprint())
    regressions = _regression_service(ex, store)
    app.extensions["flowscope_regressions"] = regressions
    app.register_blueprint(regressions_blueprint(regressions))
    if ex.config.detect_prometheus_url:
        interval = ex.config.detect_interval_s
        owned.append(Service("detection", lambda: regressions.start(interval), regressions.stop))
    app.extensions["flowscope_services"] = owned

    @app.before_request
    def _no_nul_in_backend_parameters():
        """PostgreSQL refuses NUL in text: a backend filter or path parameter holding one is a 400, not a 500."""
        if request.blueprint not in BACKEND_BLUEPRINTS:
            return
        for name, value in (*request.args.items(multi=True), *(request.view_args or {}).items()):
            if isinstance(value, str) and "\x00" in value:
                raise HttpError(400, "invalid_query", f"{name} must not contain NUL", name)

    @app.errorhandler(HttpError)
    def _flowscope_http(e: HttpError):
        return error_response(e.status, e.code, e.message, e.field, e.headers)

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        return error_response(e.code or 500, (e.name or "error").lower().replace(" ", "_"), e.description or e.name)

    @app.get(c.HEALTH_PATH)
    def health():
        loki = ex.loki
        body = {
            "status": "ok",
            "loki": {"enabled": loki is not None,
                     "queued_lines": loki.queued() if loki else 0},
            "series": {f.name: len(f) for f in ex.store.families if len(f)},
            "pending_otlp_spans": ex.pipeline.resolver.pending_spans,
        }
        return Response(orjson.dumps(body), mimetype="application/json")

    @app.get(c.OPENAPI_PATH)
    def openapi():
        return Response(orjson.dumps(openapi_document()), mimetype="application/json")

    return app

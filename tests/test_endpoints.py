"""The endpoint inventory (issue 15, point 3): routes discovered from real Flask, FastAPI and Django apps or read
from an OpenAPI document, registered over HTTP, joined with the server spans the real OpenTelemetry SDK exports
(calls, error ratio, p95, workflows, never called, undocumented), shown by the API, the page and the gauges the
no-traffic alert reads; and ``flowscope endpoints check`` against a real Flask API with a broken endpoint, whose
failures become a run."""

from __future__ import annotations

import functools
import json
import sys
import time
import types

import pytest
import requests
from flask import Flask, jsonify, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

import flowscope
from backend.app import create_app
from backend.endpoints.metrics import families
from exporter import conventions as c
from exporter.decode import native
from exporter.sdk.routes import OpenAPIError, Route, normalize_route, routes_from_openapi
from exporter.store import RunStore
from exporter.store.endpoints import EndpointEntry, p95
from flowscope.cli import main
from tests.conftest import LiveServer
from tests.otlp_data import sdk_provider

FUZZ = {"deadline": None, "derandomize": True, "database": None, "max_examples": 60,
        "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]}
S = 10**9


# --- the apps ---------------------------------------------------------------------------------------------


def login_required(view):
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if request.headers.get("Authorization") != "Bearer good":
            return jsonify(error="unauthorized"), 401
        return view(*args, **kwargs)
    return wrapper


def shop_app() -> Flask:
    """A small real API: typed path parameters, a body, one route behind auth, one deliberately broken."""
    app = Flask("shop")

    @app.get("/items/<int:item_id>")
    def get_item(item_id):
        return jsonify(id=item_id, name="widget")

    @app.post("/items")
    def create_item():
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            return jsonify(error="name is required"), 400
        return jsonify(id=1, name=body["name"]), 201

    @app.get("/admin/export")
    @login_required
    def export():
        return jsonify(rows=0)

    @app.get("/broken")
    def broken():  # the document promises an integer id
        return jsonify(id="not-a-number")

    @app.get("/leaky")
    def leaky():  # documented as requiring auth, but checks nothing
        return jsonify(secret="x")

    return app


def shop_document() -> dict:
    item = {"type": "object", "required": ["id", "name"],
            "properties": {"id": {"type": "integer"}, "name": {"type": "string"}}}
    ok = lambda schema: {"description": "ok", "content": {"application/json": {"schema": schema}}}  # noqa: E731
    err = {"description": "refused", "content": {"application/json": {"schema": {"type": "object"}}}}
    return {
        "openapi": "3.0.3", "info": {"title": "shop", "version": "1"},
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/items/{item_id}": {"get": {
                "operationId": "get_item",
                "parameters": [{"name": "item_id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 0}}],
                "responses": {"200": ok(item), "404": err}}},
            "/items": {"post": {
                "operationId": "create_item",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}},
                "responses": {"201": ok(item), "400": err}}},
            "/admin/export": {"get": {"operationId": "export", "security": [{"bearer": []}],
                                      "responses": {"200": ok({"type": "object"}), "401": err}}},
            "/broken": {"get": {"operationId": "broken", "responses": {"200": ok({
                "type": "object", "properties": {"id": {"type": "integer"}}})}}},
            "/leaky": {"get": {"operationId": "leaky", "security": [{"bearer": []}],
                               "responses": {"200": ok({"type": "object"}), "401": err}}},
        }}


@pytest.fixture
def shop():
    live = LiveServer(shop_app())
    yield live
    live.stop()


# --- discovery --------------------------------------------------------------------------------------------


def test_flask_routes_are_discovered_with_templates_views_and_auth():
    routes = flowscope.discover_routes(shop_app())
    got = {(r.method, r.path): r for r in routes}
    assert set(got) == {("GET", "/items/{item_id}"), ("POST", "/items"), ("GET", "/admin/export"),
                        ("GET", "/broken"), ("GET", "/leaky")}  # no static, HEAD or OPTIONS
    assert got[("GET", "/admin/export")].auth is True  # @login_required, through functools.wraps
    assert got[("GET", "/items/{item_id}")].auth is False
    assert got[("POST", "/items")].view.endswith("create_item") and {r.source for r in routes} == {"flask"}


def test_fastapi_routes_are_discovered_with_security_dependencies():
    fastapi = pytest.importorskip("fastapi")
    from fastapi.security import OAuth2PasswordBearer

    oauth = OAuth2PasswordBearer(tokenUrl="token")

    def current_account(token: str = fastapi.Depends(oauth)):
        return token

    app = fastapi.FastAPI()
    router = fastapi.APIRouter(prefix="/orders")

    @router.get("/{order_id}")  # auth two dependencies deep
    def get_order(order_id: int, account=fastapi.Depends(current_account)):  # noqa: B008 - FastAPI's idiom
        return {"id": order_id}

    @app.post("/public/ping")
    def ping():
        return {}

    app.include_router(router)
    got = {(r.method, r.path): r for r in flowscope.discover_routes(app)}
    assert set(got) == {("GET", "/orders/{order_id}"), ("POST", "/public/ping")}  # not /docs, /openapi.json
    assert got[("GET", "/orders/{order_id}")].auth is True and got[("POST", "/public/ping")].auth is False
    assert got[("POST", "/public/ping")].source == "fastapi"


def test_django_routes_are_discovered_with_login_required_and_class_views():
    pytest.importorskip("django")
    import django
    from django.conf import settings as dj_settings

    if not dj_settings.configured:  # no database is touched: discovery reads the URLconf only
        dj_settings.configure(ROOT_URLCONF="tests_endpoints_urls", SECRET_KEY="x",
                              INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"])
        django.setup()
    from django.contrib.auth.decorators import login_required as dj_login_required
    from django.contrib.auth.mixins import LoginRequiredMixin
    from django.http import JsonResponse
    from django.urls import path, re_path
    from django.views import View

    def health(request):
        return JsonResponse({})

    @dj_login_required
    def profile(request, pk):
        return JsonResponse({})

    class Reports(LoginRequiredMixin, View):
        def get(self, request):
            return JsonResponse({})

        def post(self, request):
            return JsonResponse({})

    urls = types.ModuleType("tests_endpoints_urls")
    urls.urlpatterns = [path("health/", health), path("users/<int:pk>/", profile),
                        re_path(r"^reports/(?P<year>[0-9]{4})/$", Reports.as_view())]
    sys.modules["tests_endpoints_urls"] = urls
    try:
        got = {(r.method, r.path): r for r in flowscope.discover_routes(urls)}
    finally:
        del sys.modules["tests_endpoints_urls"]
    assert set(got) == {(c.METHOD_ANY, "/health/"), (c.METHOD_ANY, "/users/{pk}/"), ("GET", "/reports/{year}/"),
                        ("POST", "/reports/{year}/")}
    assert got[(c.METHOD_ANY, "/users/{pk}/")].auth is True and got[(c.METHOD_ANY, "/health/")].auth is False
    assert got[("GET", "/reports/{year}/")].auth is True and got[("GET", "/reports/{year}/")].source == "django"


def test_openapi_documents_give_their_operations_and_security(tmp_path):
    got = {(r.method, r.path): r for r in routes_from_openapi(shop_document())}
    assert got[("GET", "/admin/export")] == Route("GET", "/admin/export", "export", True, "openapi")
    assert got[("GET", "/broken")].auth is False
    doc = shop_document() | {"security": [{"bearer": []}]}
    doc["paths"]["/broken"]["get"]["security"] = []  # an operation opting out of the document's default
    got = {(r.method, r.path): r.auth for r in routes_from_openapi(doc)}
    assert got[("GET", "/items/{item_id}")] is True and got[("GET", "/broken")] is False
    f = tmp_path / "api.yaml"
    f.write_text("openapi: 3.0.0\ninfo: {title: t, version: '1'}\npaths:\n  /a/{id}:\n    delete: {responses: {}}\n")
    assert routes_from_openapi(f) == [Route("DELETE", "/a/{id}", None, False, "openapi")]


@pytest.mark.parametrize("text, problem", [
    ("openapi: [unclosed", "neither JSON nor YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ('{"info": {}, "paths": {}}', "no version"),
    ('{"openapi": "3.0.0", "paths": []}', "paths: expected a mapping"),
    ('{"openapi": "3.0.0", "paths": {"no-slash": {}}}', "paths.no-slash"),
    ('{"openapi": "3.0.0", "paths": {"/a": {"get": 3}}}', "paths./a.get: expected an operation"),
])
def test_a_document_that_cannot_be_parsed_names_the_problem(tmp_path, text, problem):
    f = tmp_path / "bad.json"
    f.write_text(text)
    with pytest.raises(OpenAPIError, match=problem.replace(".", r"\.").replace("[", r"\[")):
        routes_from_openapi(f)


@pytest.mark.parametrize("route, template", [
    ("/users/<int:user_id>", "/users/{user_id}"), ("/files/<path:p>", "/files/{p}"),
    ("users/<int:pk>/", "/users/{pk}/"), ("^reports/(?P<year>[0-9]{4})/$", "/reports/{year}/"),
    ("/items/{id:int}", "/items/{id}"), ("/items/{id}", "/items/{id}"), ("/users/:id", "/users/{id}")])
def test_every_framework_spelling_of_a_route_normalizes_to_the_openapi_template(route, template):
    assert normalize_route(route) == template


# --- registration, traffic, report ----------------------------------------------------------------------------


def _server_span(tracer, route: str, method: str, status: int, workflow: str, ms: float = 0.0) -> None:
    with tracer.start_as_current_span(f"{method} {route}", kind=SpanKind.SERVER, attributes={
            "http.route": route, "http.request.method": method, "http.response.status_code": status,
            "flowscope.workflow": workflow}):
        if ms:
            time.sleep(ms / 1000)


def test_registered_routes_are_joined_with_the_traffic_the_otel_sdk_exports(ex, serve):
    srv = serve(ex)
    sent = flowscope.register_endpoints(shop_app(), service="shop", url=srv.url)
    assert len(sent) == 5
    p = sdk_provider(srv, {"service.name": "shop"})
    tracer = p.get_tracer("test")
    for _ in range(9):  # Flask's own spelling of the route, as opentelemetry-instrumentation-flask sets it
        _server_span(tracer, "/items/<int:item_id>", "GET", 200, "browse")
    _server_span(tracer, "/items/<int:item_id>", "GET", 500, "checkout")
    _server_span(tracer, "/items", "POST", 201, "checkout")
    _server_span(tracer, "/debug/vars", "GET", 200, "ops")  # called, never documented
    p.shutdown()
    assert ex.pipeline.recorder.flush()

    body = requests.get(srv.url + c.ENDPOINTS_PATH, params={"service": "shop"}, timeout=10).json()
    by = {(e["method"], e["path"]): e for e in body["endpoints"]}
    item = by[("GET", "/items/{item_id}")]
    assert (item["calls"], item["errors"], item["error_ratio"]) == (10, 1, 0.1)
    assert [w["workflow"] for w in item["workflows"]] == ["browse", "checkout"]
    assert item["statuses"] == {"200": 9, "500": 1} and item["p95_ms"] is not None and item["last_seen"]
    assert item["workflows"][0]["runs"] == c.RUN_PAGE_PATH + "?workflow=browse"
    assert {(e["method"], e["path"]) for e in body["never_called"]} == {
        ("GET", "/admin/export"), ("GET", "/broken"), ("GET", "/leaky")}
    assert [(e["method"], e["path"], e["calls"]) for e in body["undocumented"]] == [("GET", "/debug/vars", 1)]

    page = requests.get(srv.url + c.ENDPOINTS_PAGE_PATH, timeout=10)
    assert page.status_code == 200
    assert '<tr class="gap">' in page.text and "/admin/export" in page.text  # never called: highlighted
    assert '<tr class="undocumented">' in page.text and "/debug/vars" in page.text

    # the gauges the dashboard row and the no-traffic alert read, on /metrics
    metrics = {f.name: f for f in text_string_to_metric_families(requests.get(srv.url + c.METRICS_PATH,
                                                                               timeout=10).text)}
    calls = {(s.labels[c.L_METHOD], s.labels[c.L_ROUTE]): s.value for s in metrics[c.ENDPOINT_CALLS].samples}
    assert calls[("GET", "/items/{item_id}")] == 10 and calls[("GET", "/admin/export")] == 0
    last = {s.labels[c.L_ROUTE]: s.value for s in metrics[c.ENDPOINT_LAST_CALL_TIMESTAMP].samples}
    assert last["/items/{item_id}"] > last["/admin/export"] - 60  # never called: its registration, minutes ago
    assert {s.labels[c.L_SERVICE]: s.value for s in metrics[c.ENDPOINTS_UNDOCUMENTED].samples} == {"shop": 1}


def test_registering_again_keeps_first_registration_times_and_replaces_the_list(ex):
    store: RunStore = ex.runs
    a, b = EndpointEntry("GET", "/a", None, None, "manual"), EndpointEntry("GET", "/b", None, None, "manual")
    assert store.register_endpoints("svc", [a, b], now_ns=100).added == 2
    got = store.register_endpoints("svc", [b, EndpointEntry("POST", "/c", "v", True, "openapi")], now_ns=200)
    assert (got.added, got.kept, got.removed) == (1, 1, 1)
    rows = {(r.method, r.path): r.registered_at_ns for r in store.inventory("svc")}
    assert rows == {("GET", "/b"): 100, ("POST", "/c"): 200}
    store.register_endpoints("svc", [a], now_ns=300, replace=False)
    assert len(store.inventory("svc")) == 3



def test_two_replicas_registering_at_once_both_succeed(ex):
    """Replica B reads the inventory (empty), replica A registers and commits, then B inserts: B must not fail on
    the primary key (start-up registration of a service with several workers). The interleaving is made exact by
    running A from B's insert (a real engine event, no timing)."""
    from sqlalchemy import event

    store: RunStore = ex.runs
    a, b = EndpointEntry("GET", "/a", None, None, "manual"), EndpointEntry("GET", "/b", None, None, "manual")
    interleaved: list[bool] = []

    def replica_a_first(conn, cursor, statement, params, context, executemany):
        if not interleaved and statement.lstrip().upper().startswith("INSERT INTO ENDPOINTS"):
            interleaved.append(True)
            store.register_endpoints("svc", [a], now_ns=100)

    event.listen(store.engine, "before_cursor_execute", replica_a_first)
    try:
        got = store.register_endpoints("svc", [a, b], now_ns=200)
    finally:
        event.remove(store.engine, "before_cursor_execute", replica_a_first)
    assert interleaved and (got.added, got.kept) == (1, 1)
    assert {(r.path, r.registered_at_ns) for r in store.inventory("svc")} == {("/a", 100), ("/b", 200)}

def test_the_inventory_and_report_work_on_postgresql_too(database_url, make_exporter):
    """Native server steps (kind server, http.route in metadata) through ingest and the writer, on both stores."""
    ex = make_exporter(database_url=database_url)
    ex.runs.register_endpoints("svc", [EndpointEntry("GET", "/a", "v", True, "flask"),
                                       EndpointEntry("*", "/b/{id}", None, None, "django")], now_ns=5 * S)
    t0 = time.time()
    steps = [{"correlation_id": f"c-{i}", "workflow_type": "wf", "layer": "api", "component": "svc",
              "operation": "GET /b", "kind": "server", "service": "svc", "started_at": t0 + i, "duration_ms": 10 * i,
              "status": "error" if i == 0 else "ok",
              "metadata": {"http.route": "b/<int:id>", "http.request.method": "POST"}} for i in range(4)]
    result = native.decode({"steps": steps})
    ex.pipeline.ingest(result.spans, c.FORMAT_NATIVE)
    assert ex.pipeline.recorder.flush()
    report = ex.runs.endpoint_report(0, int((t0 + 60) * S))
    assert [(e.path, e.auth, e.calls) for e in report.never_called] == [("/a", True, 0)]
    b = next(e for e in report.endpoints if e.path == "/b/{id}")  # any method: the POSTs count
    assert (b.calls, b.errors, b.p95_ms, b.workflows) == (4, 1, 30.0, ("wf",))
    # a window holding more than one read takes: the newest spans, and how far back they reach
    part = ex.runs.endpoint_report(0, int((t0 + 60) * S), max_spans=2)
    assert part.truncated and part.spans_read == 2
    assert int((t0 + 2) * S) < part.covered_since_ns < int((t0 + 3) * S) and part.endpoints[1].calls == 2


def test_the_gauges_stop_at_the_series_cap_and_floor_at_the_window():
    from exporter.store.endpoints import EndpointReport, EndpointUsage

    report = EndpointReport(100 * S, 200 * S, [
        EndpointUsage("s", "GET", f"/r{i}", True, registered_at_ns=50 * S) for i in range(5)], [], [], 0, False)
    got = {f.name: f for f in families(report, series_limit=3)}
    assert len(got[c.ENDPOINT_LAST_CALL_TIMESTAMP].samples) == 3
    assert {s.value for s in got[c.ENDPOINT_LAST_CALL_TIMESTAMP].samples} == {100.0}  # the window's start
    assert got[c.ENDPOINT_SERIES_DROPPED].samples[0].value == 2
    # a truncated read floors at the oldest span it reached: a late alert rather than a false one
    partial = EndpointReport(100 * S, 200 * S, report.endpoints[:1], [], [], 10, True, covered_since_ns=150 * S)
    got = {f.name: f for f in families(partial, series_limit=3)}
    assert got[c.ENDPOINT_LAST_CALL_TIMESTAMP].samples[0].value == 150.0


def test_a_stale_scrape_serves_the_last_read_and_refreshes_behind_it(ex):
    """A scrape past the refresh interval does not wait on the store's join: it gets the last read, and a read in
    the background brings the change for the next scrape."""
    import threading

    from backend.endpoints.metrics import EndpointCollector
    from tests.conftest import wait_until

    store: RunStore = ex.runs
    gate = threading.Event()
    gate.set()

    class Slow:  # the real store, whose join can be held (a big window on a busy database)
        def endpoint_report(self, *args, **kwargs):
            assert gate.wait(30)
            return store.endpoint_report(*args, **kwargs)

    now = [1_000 * S]
    gauges = EndpointCollector(Slow(), window_s=3600, refresh_s=60, series_limit=100, clock=lambda: now[0])

    def routes() -> set[str]:
        fam = {f.name: f for f in gauges.collect()}[c.ENDPOINT_CALLS]
        return {s.labels[c.L_ROUTE] for s in fam.samples}

    store.register_endpoints("svc", [EndpointEntry("GET", "/a", None, None, "manual")], now_ns=now[0])
    assert routes() == {"/a"}  # the first scrape reads the store itself
    store.register_endpoints("svc", [EndpointEntry("GET", "/b", None, None, "manual")], now_ns=now[0],
                             replace=False)
    assert routes() == {"/a"}  # within the refresh interval: the last read
    now[0] += 61 * S
    gate.clear()
    assert routes() == {"/a"}  # stale, the store held: the last read, without waiting for the store
    gate.set()
    wait_until(lambda: routes() == {"/a", "/b"}, what="the background read")


def test_p95_is_the_nearest_rank():
    assert p95([]) is None and p95([3.0]) == 3.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0 and p95([1.0, 2.0]) == 2.0


# --- bad input ----------------------------------------------------------------------------------------------


def test_registration_refuses_bad_input_naming_the_field(client):
    def post(body, **kw):
        return client.post(c.ENDPOINTS_PATH, data=json.dumps(body), content_type="application/json", **kw)

    cases = [({"endpoints": []}, "service"),
             ({"service": "s", "endpoints": [{"method": "FETCH", "path": "/a"}]}, "endpoints[0].method"),
             ({"service": "s", "endpoints": [{"method": "GET", "path": "a"}]}, "endpoints[0].path"),
             ({"service": "s", "endpoints": [{"method": "GET", "path": "/a", "auth": "yes"}]}, "endpoints[0].auth"),
             ({"service": "s", "endpoints": [{"method": "GET", "path": "/a", "x": 1}]}, "endpoints[0].x"),
             ({"service": "s", "openapi": "openapi: [unclosed"}, "openapi"),
             ({"service": "s", "openapi": {"openapi": "3.0.0", "paths": {"/a": {"get": 3}}}}, "openapi"),
             ({"service": "s"}, "endpoints")]
    for body, field in cases:
        r = post(body)
        assert r.status_code == 400, body
        assert r.json["error"]["field"] == field, (body, r.json)
    r = post({"service": "s", "openapi": "openapi: [unclosed"})
    assert "neither JSON nor YAML" in r.json["error"]["message"]
    assert client.post(c.ENDPOINTS_PATH, data="{", content_type="application/json").status_code == 400
    assert client.post(c.ENDPOINTS_PATH, data="{}", content_type="text/plain").status_code == 415
    r = post({"service": "s", "openapi": json.dumps(shop_document())})
    assert r.status_code == 200 and r.json["added"] == 5
    for bad in ({"since": "yesterday"}, {"since": "20", "until": "10"}, {"service": "x" * 201}):
        r = client.get(c.ENDPOINTS_PATH, query_string=bad)
        assert r.status_code == 400 and r.json["error"]["field"] in bad
        assert client.get(c.ENDPOINTS_PAGE_PATH, query_string=bad).status_code == 400


def test_registration_is_authenticated_like_ingest(make_exporter):
    client = create_app(make_exporter(ingest_token="sekrit")).test_client()
    body = json.dumps({"service": "s", "endpoints": [{"method": "GET", "path": "/a"}]})
    assert client.post(c.ENDPOINTS_PATH, data=body, content_type="application/json").status_code == 401
    r = client.post(c.ENDPOINTS_PATH, data=body, content_type="application/json",
                    headers={"Authorization": "Bearer sekrit"})
    assert r.status_code == 200


_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=20)
_json = st.recursive(_scalar, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=20)
_entry = st.fixed_dictionaries({"method": st.sampled_from(["GET", "post", "*", "", "FETCH", 3]),
                                "path": st.text(max_size=40) | st.just("/a/<int:x>")},
                               optional={"view": _json, "auth": _json, "source": _json})
_body = st.one_of(
    _json,
    st.fixed_dictionaries({"service": st.text(max_size=30) | _json, "endpoints": st.lists(_entry, max_size=5) | _json},
                          optional={"replace": _json}),
    st.fixed_dictionaries({"service": st.just("s"), "openapi": _json | st.text(max_size=200) | st.fixed_dictionaries(
        {"openapi": st.just("3.0.0"), "paths": st.dictionaries(st.text(max_size=10), _json, max_size=3)})}))


@settings(**FUZZ)
@given(body=_body)
def test_no_registration_body_gets_a_5xx_and_refusals_name_a_field(client, body):
    r = client.post(c.ENDPOINTS_PATH, data=json.dumps(body), content_type="application/json")
    assert r.status_code in (200, 400), (r.status_code, r.data[:300])
    if r.status_code == 400:
        assert r.json["error"]["code"] == "invalid_payload" and r.json["error"]["message"]


@settings(**FUZZ)
@given(text=st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_any_document_text_parses_or_is_refused_with_a_reason(text):
    from exporter.sdk.routes import parse_document

    try:
        routes_from_openapi(parse_document(text))
    except OpenAPIError as e:
        assert str(e)


@settings(**FUZZ)
@given(route=st.text(max_size=60))
def test_normalizing_any_route_is_idempotent(route):
    got = normalize_route(route)
    assert got.startswith("/") and normalize_route(got) == got  # a stored template reads back as itself


# --- flowscope endpoints check ---------------------------------------------------------------------------------


def test_check_finds_the_broken_endpoint_and_missing_auth_and_records_a_run(ex, serve, shop, tmp_path, cli):
    srv = serve(ex)
    doc = tmp_path / "openapi.json"
    doc.write_text(json.dumps(shop_document()))
    r = cli("endpoints", "check", "--openapi", str(doc), "--base-url", shop.url, "--flowscope", srv.url,
            "--service", "shop", "--examples", "5", "--header", "Authorization: Bearer good")
    assert r.returncode == 1, r.stderr
    lines = {ln.split()[2]: ln.split()[0] for ln in r.stdout.splitlines() if ln.startswith(("ok ", "FAIL "))}
    assert lines == {"/items/{item_id}": "ok", "/items": "ok", "/admin/export": "ok", "/broken": "FAIL",
                     "/leaky": "FAIL"}
    assert "Response violates schema" in r.stdout and "Auth not enforced" in r.stdout
    assert ex.pipeline.recorder.flush()
    cid = r.stdout.strip().splitlines()[-1].rsplit("/", 1)[1]
    run = ex.runs.get_run(cid)
    assert run.run.status == "error" and run.run.workflow == c.ENDPOINT_CHECK_WORKFLOW
    failed = {s.operation: s for s in run.spans if s.status == "error" and s.is_step}
    assert set(failed) == {"GET /broken", "GET /leaky"}
    assert "curl" in failed["GET /broken"].error_message and "not of type" in failed["GET /broken"].error_message
    # the check's client spans are not counted as traffic of the API they called
    assert ex.runs.endpoint_report(0, time.time_ns() + S).services_without_inventory == []


def test_check_exits_2_naming_the_problem_of_a_document_it_cannot_parse(tmp_path, cli, shop):
    bad = tmp_path / "openapi.yaml"
    bad.write_text("openapi: 3.0.0\npaths: [")
    r = cli("endpoints", "check", "--openapi", str(bad), "--base-url", shop.url)
    assert r.returncode == 2 and "neither JSON nor YAML" in r.stderr
    r = cli("endpoints", "check", "--openapi", shop.url + "/no-such-document", "--base-url", shop.url)
    assert r.returncode == 2 and "HTTP 404" in r.stderr
    good = tmp_path / "ok.json"
    good.write_text(json.dumps(shop_document()))
    r = cli("endpoints", "check", "--openapi", str(good), "--base-url", "ftp://x")
    assert r.returncode == 2 and "--base-url" in r.stderr


def test_the_cli_entry_point_is_main():
    assert main(["endpoints", "check", "--openapi", "/nonexistent.json", "--base-url", "http://127.0.0.1:9"]) == 2


def test_a_document_nested_deeper_than_the_stack_is_refused_not_a_500(client):
    from exporter.sdk.routes import parse_document

    with pytest.raises(OpenAPIError, match="nested too deeply"):
        parse_document("[" * 100_000)
    r = client.post(c.ENDPOINTS_PATH, data=json.dumps({"service": "s", "openapi": "[" * 100_000}),
                    content_type="application/json")
    assert r.status_code == 400 and r.json["error"]["field"] == "openapi", r.data[:300]


def test_check_never_shows_or_records_the_header_credentials(shop):
    from backend.endpoints.check import run_batch, run_check

    result = run_check(shop_document(), shop.url, examples=2, headers={"X-Api-Key": "topsecret-123"})
    broken = [f for f in result.failures if f.path == "/broken"]
    assert broken and "X-Api-Key: [REDACTED]" in broken[0].curl
    assert "topsecret-123" not in json.dumps(run_batch(result, "shop", 1)), "a --header value leaked into the run"

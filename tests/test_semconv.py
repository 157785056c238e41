"""The semantic-conventions table (exporter/semconv.py): one test per row, old and new attribute names,
through the table's functions and through both OTLP decoders."""

import orjson
import pytest

from exporter import semconv
from exporter.decode import otlp
from exporter.semconv import KIND_CLIENT, KIND_CONSUMER, KIND_INTERNAL, KIND_PRODUCER, KIND_SERVER
from tests.otlp_data import request, span, to_json

SERVER, CLIENT, INTERNAL = KIND_SERVER, KIND_CLIENT, KIND_INTERNAL

#: row name → cases (span attributes, kind, resource attributes, expected layer); the stable names and
#: the older ones, each of a row's attributes at least once.
LAYER_CASES = {
    "cache": [({"db.system.name": "redis"}, CLIENT, {}, "cache"),
              ({"db.system": "memcached"}, CLIENT, {}, "cache"),
              ({"db.system": "Valkey"}, INTERNAL, {}, "cache")],
    "database": [({"db.system.name": "postgresql"}, CLIENT, {}, "database"),
                 ({"db.system": "mysql"}, CLIENT, {}, "database"),
                 ({"db.system.name": "microsoft.sql_server", "db.system": "mssql", "server.address": "db"}, CLIENT,
                  {}, "database")],
    "messaging": [({"messaging.system": "kafka"}, CLIENT, {}, "queue"),
                  ({"messaging.system": "rabbitmq"}, INTERNAL, {}, "queue")],
    "producer_consumer": [({}, KIND_PRODUCER, {}, "queue"), ({}, KIND_CONSUMER, {}, "queue")],
    "browser": [({}, INTERNAL, {"telemetry.sdk.language": "webjs"}, "frontend"),
                ({"http.request.method": "GET"}, CLIENT, {"telemetry.sdk.language": "browser"}, "frontend")],
    "http_rpc_server": [({"http.request.method": "GET", "url.path": "/x"}, SERVER, {}, "api"),
                        ({"http.method": "GET"}, SERVER, {}, "api"),
                        ({"url.scheme": "https"}, SERVER, {}, "api"),
                        ({"rpc.system": "grpc", "rpc.service": "Cart"}, SERVER, {}, "api")],
    "http_rpc_client": [({"http.request.method": "POST", "server.address": "pay"}, CLIENT, {}, "external"),
                        ({"http.method": "GET", "net.peer.name": "pay"}, CLIENT, {}, "external"),
                        ({"rpc.system": "grpc"}, CLIENT, {}, "external")],
    "faas_server": [({"faas.trigger": "timer"}, SERVER, {}, "worker"),
                    ({"faas.trigger": "http", "http.request.method": "GET"}, SERVER, {}, "api")],
    "faas_client": [({"faas.invoked_name": "resize", "faas.invoked_provider": "aws"}, CLIENT, {}, "external")],
}

#: row name → cases (span attributes, kind, expected component; the service is "shop").
COMPONENT_CASES = {
    "explicit": [({"flowscope.component": "orders-db", "db.system": "postgresql"}, CLIENT, "orders-db")],
    "database": [({"db.system.name": "postgresql", "server.address": "db-1"}, CLIENT, "postgresql"),
                 ({"db.system": "redis"}, CLIENT, "redis"),
                 # a dual-emitting SDK (OTEL_SEMCONV_STABILITY_OPT_IN=database/dup): the stable name wins
                 ({"db.system": "mssql", "db.system.name": "microsoft.sql_server"}, CLIENT, "microsoft.sql_server")],
    "messaging": [({"messaging.system": "kafka", "server.address": "k-1"}, KIND_PRODUCER, "kafka")],
    "rpc": [({"rpc.system": "grpc", "rpc.service": "CartService"}, SERVER, "CartService")],
    "peer": [({"peer.service": "payments", "server.address": "pay.example"}, CLIENT, "payments"),
             ({"faas.invoked_name": "resize"}, CLIENT, "resize"),
             ({"server.address": "pay.example", "net.peer.name": "old.example"}, CLIENT, "pay.example"),
             ({"net.peer.name": "pay.example"}, CLIENT, "pay.example"),
             ({"server.address": "shop.example"}, SERVER, "shop")],  # a server's own address is not a peer
}


def _cases(table):
    return [pytest.param(row, *case, id=f"{row}-{i}") for row, cases in table.items() for i, case in enumerate(cases)]


def test_every_row_and_every_attribute_name_of_the_tables_has_a_case():
    assert [r.name for r in semconv.LAYER_RULES] == list(LAYER_CASES)
    assert [r.name for r in semconv.COMPONENT_RULES] == list(COMPONENT_CASES)
    for rules, table in ((semconv.LAYER_RULES, LAYER_CASES), (semconv.COMPONENT_RULES, COMPONENT_CASES)):
        for r in rules:
            seen = {k for case in table[r.name] for k in case[0]} | {k for case in table[r.name]
                                                                     for k in (case[2] if len(case) == 4 else {})}
            assert set(r.attrs) <= seen and set(getattr(r, "resource", ())) <= seen, r.name


@pytest.mark.parametrize("row,attrs,kind,resource,layer", _cases(LAYER_CASES))
def test_layer_row(row, attrs, kind, resource, layer):
    assert semconv.derive_layer(attrs, kind, resource) == layer


@pytest.mark.parametrize("row,attrs,kind,component", _cases(COMPONENT_CASES))
def test_component_row(row, attrs, kind, component):
    assert semconv.derive_component(attrs, kind, "shop") == component


@pytest.mark.parametrize("attrs,kind,layer", [
    ({}, INTERNAL, "other"),
    ({"http.request.method": "GET"}, INTERNAL, "other"),  # HTTP attributes on an internal span say nothing
    ({"flowscope.layer": "worker", "db.system": "postgresql"}, CLIENT, "worker"),  # explicit wins
    ({"flowscope.layer": "nonsense"}, CLIENT, "other"),
    ({"db.system": ""}, CLIENT, "other"),  # empty counts as unset
    ({"db.system": "", "db.system.name": "postgresql"}, CLIENT, "database"),
    ({"db.system": "postgresql", "http.request.method": "GET"}, SERVER, "database"),  # first row wins
])
def test_layer_precedence(attrs, kind, layer):
    assert semconv.derive_layer(attrs, kind, {}) == layer


def test_the_decoders_one_pass_web_flag_and_the_wanted_keys_agree():
    # the decoder passes only the wanted keys and web=False when no *other* key is http.*/url.*/rpc.*:
    # a span whose only HTTP attribute is a wanted one is still an HTTP span
    assert semconv.derive_layer({"http.method": "GET"}, CLIENT, {}, web=False) == "external"
    assert semconv.derive_layer({"server.address": "x"}, CLIENT, {}, web=False) == "other"
    assert semconv.derive_layer({"server.address": "x"}, CLIENT, {}, web=True) == "external"
    rows = [*semconv.LAYER_RULES, *semconv.COMPONENT_RULES]
    assert {k for r in rows for k in r.attrs} <= semconv.WANTED_KEYS
    assert set(semconv.HTTP_TARGETS) <= semconv.WANTED_KEYS
    assert otlp.WANTED_KEYS is semconv.WANTED_KEYS


@pytest.mark.parametrize("name,attrs,expected", [
    ("GET", {"http.route": "/users/{id}", "http.request.method": "GET"}, "GET /users/{id}"),
    ("POST", {"http.route": "/checkout", "http.method": "POST"}, "POST /checkout"),
    ("GET", {"url.template": "/users/{id}"}, "GET /users/{id}"),  # a client span's target
    ("GET", {"http.route": "/a", "url.template": "/b"}, "GET /a"),  # the route first
    ("GET", {"url.path": "/users/123", "url.full": "http://x/users/123"}, "GET"),  # never the raw path
    ("GET", {"http.route": ""}, "GET"),
    ("GET", {"http.route": 42}, "GET"),
    ("HTTP", {"http.request.method": "_OTHER", "http.route": "/x"}, "HTTP /x"),  # an unknown method's name
    ("PURGE", {"http.request.method": "PURGE", "http.route": "/cache"}, "PURGE /cache"),  # a configured method
    ("M-SEARCH", {"url.template": "/upnp"}, "M-SEARCH /upnp"),
    ("SELECT 1", {"http.route": "/x"}, "SELECT 1"),  # not one word: not a method
    ("GET /users/{id}", {"http.route": "/users/{id}"}, "GET /users/{id}"),  # already named by the convention
    ("checkout", {"http.route": "/checkout"}, "checkout"),
    ("get", {"http.route": "/x"}, "get"),  # methods are case-sensitive
    ("SELECT 1", {"db.system": "postgresql"}, "SELECT 1"),
])
def test_span_name_follows_the_http_span_name_convention(name, attrs, expected):
    assert semconv.span_name(name, attrs) == expected


def _decode(encoding, spans, resource=None):
    req = request(spans, service="shop", resource=resource)
    res = (otlp.decode_protobuf(req.SerializeToString()) if encoding == "protobuf"
           else otlp.decode_json(orjson.dumps(to_json(req))))
    assert not res.rejected
    return res.spans


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
@pytest.mark.parametrize("row,attrs,kind,resource,layer", _cases(LAYER_CASES))
def test_layer_row_through_both_decoders(encoding, row, attrs, kind, resource, layer):
    (s,) = _decode(encoding, [span("op", kind=kind, attrs={**attrs, "other.key": 1})], resource)
    assert s.layer == layer


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
@pytest.mark.parametrize("row,attrs,kind,component", _cases(COMPONENT_CASES))
def test_component_row_through_both_decoders(encoding, row, attrs, kind, component):
    (s,) = _decode(encoding, [span("op", kind=kind, attrs=attrs)])
    assert s.component == component


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_the_decoders_name_a_span_named_by_its_method_after_its_route(encoding):
    server = span("GET", kind=SERVER, attrs={"http.request.method": "GET", "http.route": "/users/{id}",
                                             "url.path": "/users/123"})
    client = span("GET", kind=CLIENT, attrs={"http.method": "GET", "url.template": "/stock/{sku}"})
    redis = span("GET", kind=CLIENT, attrs={"db.system": "redis", "db.operation": "GET"})
    spans = _decode(encoding, [server, client, redis])
    assert [s.operation for s in spans] == ["GET /users/{id}", "GET /stock/{sku}", "GET"]
    assert spans[0].attributes["url.path"] == "/users/123"  # the rest still decode lazily, unchanged

"""Workflow names for traces the real OpenTelemetry Python SDK exports, as it exports them.

Each test runs `flowscope serve`'s app on a live port and exports with the stock SDK
(`OTLPSpanExporter` over HTTP/protobuf) through SimpleSpanProcessor (one request per span, the
root last) or BatchSpanProcessor (whole or split batches), and one trace across two services with
one TracerProvider each, whose requests arrive out of order. The workflow label is checked on
/metrics for every series, so a span named by the timeout fallback (`workflow="SELECT 1"`) fails.
"""

from __future__ import annotations

import re

import pytest
import requests
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from exporter import conventions as c
from exporter.resolver import PENDING_LIMIT, SHUTDOWN, TIMEOUT
from tests.otlp_data import sdk_provider

PROCESSORS = {
    "simple": lambda exp: SimpleSpanProcessor(exp),
    "batch": lambda exp: BatchSpanProcessor(exp, schedule_delay_millis=60_000),
    "batch_of_2": lambda exp: BatchSpanProcessor(exp, max_export_batch_size=2, schedule_delay_millis=60_000),
}
_WORKFLOW = re.compile(r'workflow="([^"]*)"')
_SERIES = (c.STEP_DURATION_SECONDS + "_count", c.WORKFLOW_RUNS_TOTAL, c.STEP_ERRORS_TOTAL)


def provider(srv, service: str, processor: str = "simple") -> TracerProvider:
    return sdk_provider(srv, {"service.name": service}, PROCESSORS[processor])


def scrape(srv) -> str:
    return requests.get(srv.url + c.METRICS_PATH, timeout=10).text


def workflows(text: str) -> dict[str, float]:
    """Spans per workflow label, from the step histograms' counts (and every workflow label seen)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(_SERIES):
            for wf in _WORKFLOW.findall(line):
                n = float(line.rsplit(" ", 1)[1]) if line.startswith(_SERIES[0]) else 0.0
                out[wf] = out.get(wf, 0.0) + n
    return out


def guessed(text: str, reason: str) -> float:
    m = re.search(rf'^{c.WORKFLOW_NAMES_GUESSED_TOTAL}{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    assert m, f"{c.WORKFLOW_NAMES_GUESSED_TOTAL}{{reason={reason}}} is not exposed"
    return float(m.group(1))


@pytest.mark.parametrize("processor", list(PROCESSORS))
def test_one_service_names_every_span_after_the_root_that_carries_the_workflow(ex, serve, processor):
    srv = serve(ex)
    p = provider(srv, "shop", processor)
    tracer = p.get_tracer("test")
    with tracer.start_as_current_span("POST /checkout", kind=SpanKind.SERVER,
                                      attributes={"http.request.method": "POST", "http.route": "/checkout",
                                                  "flowscope.workflow": "checkout"}):
        for _ in range(3):
            with tracer.start_as_current_span("SELECT 1", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql"}):
                pass
        with tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={"db.system.name": "redis"}):
            pass
    p.shutdown()
    assert workflows(scrape(srv)) == {"checkout": 5}
    assert ex.pipeline.resolver.pending_spans == 0


def _two_services(srv, processor: str, child_first: bool) -> None:
    """shop (root, carries flowscope.workflow) calls inventory over HTTP; inventory queries its database."""
    shop, inventory = provider(srv, "shop", processor), provider(srv, "inventory", processor)
    t_shop, t_inv = shop.get_tracer("shop"), inventory.get_tracer("inventory")
    with t_shop.start_as_current_span("POST /checkout", kind=SpanKind.SERVER,
                                      attributes={"http.request.method": "POST", "http.route": "/checkout",
                                                  "flowscope.workflow": "checkout"}):
        with t_shop.start_as_current_span("GET", kind=SpanKind.CLIENT,
                                          attributes={"http.request.method": "GET", "server.address": "inventory",
                                                      "url.template": "/stock/{sku}"}):
            headers: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(headers)
            ctx = TraceContextTextMapPropagator().extract(headers)  # what inventory's server instrumentation reads
            with t_inv.start_as_current_span("GET", context=ctx, kind=SpanKind.SERVER,
                                             attributes={"http.request.method": "GET"}) as server:
                server.set_attribute("http.route", "/stock/{sku}")  # as a framework sets it, after the start
                with t_inv.start_as_current_span("SELECT 1", kind=SpanKind.CLIENT,
                                                 attributes={"db.system.name": "postgresql"}):
                    pass
        if child_first:
            inventory.force_flush()  # the child service's request first …
    if not child_first:
        shop.force_flush()
    # … the other service's request later, in a separate request
    for p in (shop, inventory) if not child_first else (inventory, shop):
        p.shutdown()


@pytest.mark.parametrize("processor", list(PROCESSORS))
@pytest.mark.parametrize("child_first", [True, False], ids=["child_service_first", "root_service_first"])
def test_a_trace_across_two_services_exported_in_separate_requests_gets_one_workflow(ex, serve, processor,
                                                                                     child_first):
    srv = serve(ex)
    _two_services(srv, processor, child_first)
    text = scrape(srv)
    assert workflows(text) == {"checkout": 4}, text
    assert 'workflow="SELECT 1"' not in text and 'workflow="GET' not in text
    # the child service's spans named by the HTTP span-name convention, not "GET"
    assert ex.store.value(c.STEP_DURATION_SECONDS + "_count", {
        "workflow": "checkout", "layer": "api", "component": "inventory", "operation": "GET /stock/{sku}",
        "status": "ok"}) == 1
    assert ex.pipeline.resolver.pending_spans == 0
    assert all(guessed(text, r) == 0 for r in (TIMEOUT, PENDING_LIMIT, SHUTDOWN))


@pytest.mark.parametrize("processor", ["simple", "batch"])
def test_a_root_named_by_its_http_method_is_named_after_its_route(ex, serve, processor):
    srv = serve(ex)
    p = provider(srv, "users", processor)
    tracer = p.get_tracer("test")
    for uid in ("123", "456"):
        with tracer.start_as_current_span("GET", kind=SpanKind.SERVER,
                                          attributes={"http.request.method": "GET", "url.path": f"/users/{uid}"}) as r:
            r.set_attribute("http.route", "/users/{id}")
            with tracer.start_as_current_span("SELECT 1", kind=SpanKind.CLIENT, attributes={"db.system": "mysql"}):
                pass
    with tracer.start_as_current_span("GET", kind=SpanKind.SERVER,
                                      attributes={"http.request.method": "GET", "url.path": "/health"}):
        pass  # no route and no template: the method is all the convention gives
    p.shutdown()
    text = scrape(srv)
    assert workflows(text) == {"GET /users/{id}": 4, "GET": 1}
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "GET /users/{id}", "status": "ok"}) == 2


def test_a_trace_whose_root_never_comes_is_named_by_the_timeout_rule_and_counted(ex, serve):
    srv = serve(ex)
    now = [1_000.0]
    ex.pipeline.clock = lambda: now[0]  # the pipeline's clock, which it hands to the resolver
    p = provider(srv, "inventory")
    tracer = p.get_tracer("test")
    # the caller is not instrumented: a remote parent that will never be exported
    parent = SpanContext(trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    server = tracer.start_span("GET", context=set_span_in_context(NonRecordingSpan(parent)), kind=SpanKind.SERVER,
                               attributes={"http.request.method": "GET", "http.route": "/stock/{sku}"})
    with tracer.start_as_current_span("SELECT 1", context=set_span_in_context(server), kind=SpanKind.CLIENT,
                                      attributes={"db.system": "postgresql"}):
        pass
    server.end()
    p.shutdown()
    assert ex.pipeline.resolver.pending_spans == 2
    assert workflows(scrape(srv)) == {}
    now[0] += ex.pipeline.resolver.timeout_s - 1
    ex.pipeline.tick()
    assert ex.pipeline.resolver.pending_spans == 2
    now[0] += 1
    ex.pipeline.tick()
    text = scrape(srv)
    # the earliest local span is inventory's server span, named by the HTTP convention
    assert workflows(text) == {"GET /stock/{sku}": 2}
    assert guessed(text, TIMEOUT) == 1 and guessed(text, PENDING_LIMIT) == 0

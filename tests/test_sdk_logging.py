"""The SDK's LogHandler: an app's log records reach Flowscope with their run's ids, in-process and remote, through
the spans' bounded, retried queue; nothing loops, nothing blocks, and what is dropped is counted.

Remote mode posts to a real server on 127.0.0.1 (the app on a live port); the lines are checked where the
server hands them on (a pipeline sink), as Loki and the run store get them.
"""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

import flowscope
from exporter import conventions as c
from exporter import sdk
from exporter.config import load_config
from exporter.retry import RetryPolicy
from exporter.sdk import LogHandler, WorkflowTracer, current_ids
from exporter.sdk.sinks import InProcessSink, RemoteSink
from tests.conftest import free_port
from tests.test_log_ingest import LineSink

WAIT_S = 60  # a bound for a broken run; a pass takes a small fraction of it
FAST_GIVE_UP = RetryPolicy(initial_backoff_s=0.01, max_backoff_s=0.05, deadline_s=0.3)


@pytest.fixture
def app_log():
    """A logger of the app's own, with nothing else attached; the handlers a test adds are removed after."""
    from exporter.sdk.context import current_step

    log = logging.getLogger("shop.checkout")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    token = current_step.set(None)  # outside any run, whatever an earlier test on this thread left in scope
    yield log
    current_step.reset(token)
    for h in list(log.handlers):
        log.removeHandler(h)


@pytest.fixture
def received(ex):
    sink = LineSink()
    ex.pipeline.add_sink(sink)
    return sink


def dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value(c.SDK_SPANS_DROPPED_TOTAL, {"reason": reason}) or 0


def test_in_process_lines_carry_the_run_in_scope_extras_and_the_exception(ex, received, app_log):
    tracer = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    app_log.addHandler(LogHandler(sink=InProcessSink(ex.pipeline)))
    with tracer.workflow("checkout", correlation_id="order-7"), tracer.step("api", "payments", "charge"):
        cid, tid, sid = current_ids()
        app_log.warning("card declined for %s", "ana", extra={"order_id": 7, "card": object(), "nested": {"a": [1]}})
        try:
            raise TimeoutError("gateway")
        except TimeoutError:
            app_log.exception("charge failed")
    app_log.debug("after the run")
    with WorkflowTracer(InProcessSink(ex.pipeline), service="billing").workflow("invoice"):
        app_log.info("in another service's run")
    warn, err, after, billing = received.lines
    assert (billing.service, billing.workflow) == ("billing", "invoice")
    assert after.service == load_config().service_name  # outside any run: FLOWSCOPE_SERVICE_NAME
    assert (warn.level, warn.body, warn.logger, warn.source) == (
        "warn", "card declined for ana", "shop.checkout", "app")
    assert (warn.correlation_id, warn.trace_id, warn.span_id, warn.workflow, warn.service) == (
        "order-7", tid, sid, "checkout", "shop")
    assert cid == "order-7" and len(tid) == 32 and len(sid) == 16
    assert warn.attributes["order_id"] == 7 and warn.attributes["nested"] == {"a": [1]}
    assert warn.attributes["card"].startswith("<object object")  # what JSON can't hold, as its text
    assert err.level == "error" and "TimeoutError: gateway" in err.exception and "Traceback" in err.exception
    assert (after.level, after.severity_number, after.correlation_id, after.workflow) == ("debug", 5, None, None)
    assert ex.store.value(c.LOG_LINES_RECEIVED_TOTAL, {"format": c.FORMAT_SDK}) == 4


def test_the_default_handler_follows_configure_and_is_exported_from_flowscope(ex, received, app_log):
    assert flowscope.LogHandler is LogHandler
    sdk.configure(exporter=ex)
    try:
        app_log.addHandler(flowscope.LogHandler(level=logging.INFO))
        app_log.debug("below the handler's level")
        app_log.info("shipped", extra={"correlation_id": "given-by-hand"})
        assert [(ln.body, ln.correlation_id) for ln in received.lines] == [("shipped", "given-by-hand")]
    finally:
        sdk.shutdown()


def test_remote_mode_posts_native_lines_the_server_accepts(ex, serve, received, app_log):
    srv = serve(ex)
    registry = CollectorRegistry()
    remote = RemoteSink(srv.url, batch_wait_s=0.05, registry=registry)
    tracer = WorkflowTracer(remote, service="shop")
    app_log.addHandler(LogHandler(sink=remote))
    try:
        with tracer.workflow("checkout", correlation_id="order-8"):
            _, tid, sid = current_ids()
            app_log.error("declined", extra={"amount": 12.5, "huge": 2**80, "when": object()})
        for i in range(300):
            app_log.info("line %d", i)
        assert remote.flush(WAIT_S)
    finally:
        remote.close(WAIT_S)
    assert remote.sent >= 301 and remote.dropped == 0 and dropped(registry, "rejected") == 0
    first = received.lines[0]
    assert (first.level, first.body, first.service, first.source) == ("error", "declined", "shop", "app")
    assert (first.correlation_id, first.trace_id, first.span_id, first.workflow) == ("order-8", tid, sid, "checkout")
    assert first.attributes["amount"] == 12.5 and first.attributes["huge"] == str(2**80)
    assert [ln.body for ln in received.lines[1:]] == [f"line {i}" for i in range(300)]
    assert ex.store.value(c.LOG_LINES_RECEIVED_TOTAL, {"format": c.FORMAT_NATIVE}) == 301


def test_flowscope_s_own_records_and_its_sender_s_never_loop_back(app_log):
    """The handler on the root logger, the server down: the sender's retry warnings (its own logger, its own
    thread) and a record logged from inside the sink are not sent; the app's one line is, and is counted lost."""
    registry = CollectorRegistry()
    remote = RemoteSink(f"http://127.0.0.1:{free_port()}", batch_wait_s=0.01, retry=FAST_GIVE_UP, registry=registry)
    handler = LogHandler(sink=remote)
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        logging.getLogger("flowscope.sdk").warning("Flowscope's own warning")
        assert remote.queued() == 0
        logging.getLogger("shop").error("the app's line")
        remote.flush(WAIT_S)  # False or True: the line is given up on within the policy's deadline
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        remote.close(WAIT_S)
    assert dropped(registry, "retries_exhausted") == 1  # the app's line; no line per retry warning
    assert remote.dropped == 1 and handler.dropped == 0

    class LoggingSink:
        calls = 0

        def logs(self, lines):
            LoggingSink.calls += 1
            app_log.error("logged while the handler sends")  # the same handler: must not recurse

    app_log.addHandler(LogHandler(sink=LoggingSink()))
    app_log.error("once")
    assert LoggingSink.calls == 1


def test_a_full_queue_drops_and_counts_without_blocking_and_a_broken_sink_never_raises(app_log):
    registry = CollectorRegistry()
    # the sender lingers (a minute) for a batch of 100 that never fills: the queue of 2 stays full
    remote = RemoteSink(f"http://127.0.0.1:{free_port()}", queue_size=2, batch_size=100, batch_wait_s=60,
                        retry=FAST_GIVE_UP, registry=registry)
    app_log.addHandler(LogHandler(sink=remote))
    try:
        for i in range(5):
            app_log.info("burst %d", i)
        assert dropped(registry, "queue_full") == 3 and remote.queued() == 2
    finally:
        remote.close(WAIT_S)
    assert dropped(registry, "queue_full") + dropped(registry, "retries_exhausted") \
        + dropped(registry, "shutdown") == 5  # every line accounted for

    class Broken:
        def logs(self, lines):
            raise RuntimeError("sink bug")

    handler = LogHandler(sink=Broken())
    app_log.addHandler(handler)
    app_log.error("the app goes on")
    assert handler.dropped == 1
    # a record whose arguments don't fit its format still becomes a line, with what was logged
    line = handler.to_line(logging.makeLogRecord({"msg": "%d apples", "args": ("three",), "levelno": 25}))
    assert line.body == "%d apples ('three',)" and line.level == "info"


class _Detached:
    """An app object whose text fails once its session is gone (an ORM instance read from another thread)."""

    def __str__(self) -> str:
        raise RuntimeError("instance is not bound to a session")

    __repr__ = __str__


def test_extras_are_taken_when_logged_and_one_that_cannot_be_read_costs_nothing_else(ex, serve, received, app_log):
    """Remote mode: the sender encodes lines later, on its thread. An extra is read when it is logged (a dict the
    app changes afterwards is the line's as it was), and one whose text raises is its type's name: neither the
    line nor the steps and lines batched with it are lost."""
    srv = serve(ex)
    registry = CollectorRegistry()
    remote = RemoteSink(srv.url, batch_wait_s=WAIT_S, registry=registry)  # lingers: only flush sends
    handler = LogHandler(sink=remote)
    app_log.addHandler(handler)
    cart = {"items": ["book"]}
    try:
        with WorkflowTracer(remote, service="shop").workflow("checkout", correlation_id="order-9"):
            app_log.info("before")
            app_log.info("cart priced", extra={"cart": cart, "user_obj": _Detached()})
            cart["items"].append("pen")  # after the call: not the line's
            app_log.info("after")
        assert remote.flush(WAIT_S)
    finally:
        remote.close(WAIT_S)
    assert [ln.body for ln in received.lines] == ["before", "cart priced", "after"]
    priced = received.lines[1]
    assert priced.attributes == {"cart": {"items": ["book"]}, "user_obj": "<_Detached>"}
    assert remote.dropped == 0 and handler.dropped == 0
    assert ex.store.value(c.WORKFLOW_RUNS_TOTAL, {"workflow": "checkout", "status": "ok"}) == 1  # its run too

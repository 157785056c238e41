"""Secrets never leave: a corpus of secrets through every input path, grepped for in every output.

Inputs: OTLP protobuf and OTLP/JSON, native JSON (steps, workflows, errors), the in-process SDK (its
fast path and its Span path), ErrorLogger, and a posted profile. Outputs: every row of the run store,
the runs API, the run page, the Loki payload (a real local Loki stand-in), /metrics and the log records.
"""

from __future__ import annotations

import logging

import orjson
import pytest
from sqlalchemy import text

from backend.app import create_app
from exporter import conventions as c
from exporter.redact import MaskUrlFilter, Redactor, mask_url
from exporter.sdk import WorkflowTracer
from exporter.sdk.errors import ErrorLogger
from exporter.sdk.sinks import InProcessSink
from tests.fake_loki import FakeLoki
from tests.otlp_data import request, span, to_json

PB = {"Content-Type": "application/x-protobuf"}

QUERY_PASSWORD = "Hunter2Query"
API_KEY = "sk_live_PayKey123"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJib2IifQ.c2lnbmF0dXJlX3NlY3JldA"
DSN_PASSWORD = "DsnPassw0rd"
CARD, CARD_SPACED = "4111111111111111", "4111 1111 1111 1111"
BEARER = "BearerTok3n-xyz"
PWD = "PwdSecret9"
SESSION_ID = "Sess1onIdValue"
#: every raw secret string; none may appear in any output
SECRETS = (QUERY_PASSWORD, API_KEY, AWS_KEY_ID, AWS_SECRET, JWT, DSN_PASSWORD, CARD, CARD_SPACED, BEARER, PWD,
           SESSION_ID)

LOGIN = f"GET /login?password={QUERY_PASSWORD}"
PAY = f"POST /pay?api_key={API_KEY}"
MESSAGE = (f"payment failed: card {CARD_SPACED} via postgresql://app:{DSN_PASSWORD}@db:5432/shop, "
           f"Authorization: Bearer {BEARER}, jwt {JWT}, key {AWS_KEY_ID} aws_secret_access_key={AWS_SECRET} "
           f"pwd={PWD} session_id={SESSION_ID} raw {CARD}")
ATTRS = {"aws_access_key_id": AWS_KEY_ID, "aws_secret_access_key": AWS_SECRET, "session_id": SESSION_ID,
         "db.connection_string": f"postgresql://app:{DSN_PASSWORD}@db/shop", "payment.card": CARD,
         "http.request.header.x-api-key": API_KEY, "note": f"token {JWT}"}


# -- the corpus, once per input path ---------------------------------------------------------------------

def _otlp():
    root = span(LOGIN, kind=2, attrs={"http.url": f"https://shop.example/login?password={QUERY_PASSWORD}"})
    pay = span(PAY, trace_id=root["trace_id"], parent=root["span_id"], kind=3, attrs=ATTRS, error=True,
               message=MESSAGE, events=[("exception", {"exception.type": "PaymentError", "exception.message": MESSAGE,
                                                       "exception.stacktrace": f"Traceback:\n  {MESSAGE}"})])
    return request([pay, root])


def _native():
    cid = "run-native-1"
    step = {"correlation_id": cid, "workflow_type": LOGIN, "layer": "external", "component": "stripe",
            "operation": PAY, "status": "failed", "started_at": 1795000000.0, "duration_ms": 3,
            "error_type": "PaymentError", "error_message": MESSAGE, "metadata": ATTRS,
            "state": {"form": {"pwd": PWD, "card": CARD}, "dsn": f"postgresql://app:{DSN_PASSWORD}@db/x"},
            "stack_trace": MESSAGE}
    wf = {"correlation_id": cid, "workflow_type": LOGIN, "status": "failed", "started_at": 1795000000.0,
          "duration_ms": 5, "error_message": MESSAGE}
    err = {"error_type": "AuthError", "message": MESSAGE, "layer": "api", "component": "auth",
           "workflow_type": LOGIN, "correlation_id": cid, "stack_trace": MESSAGE}
    return {"steps": [step], "workflows": [wf], "errors": [err]}


def _sdk(ex) -> None:
    """The SDK: a fast-path step (no state, no failure), a Span-path step, and ErrorLogger."""
    t = WorkflowTracer(InProcessSink(ex.pipeline), service="shop")
    with t.workflow(LOGIN) as run:
        with t.step("api", "auth", PAY):
            pass
        with t.step("database", "postgres", f"SELECT users pwd={PWD}"):
            pass
        with pytest.raises(RuntimeError), t.step("external", "stripe", PAY, metadata=ATTRS,
                                                 state={"session_id": SESSION_ID}):
            raise RuntimeError(MESSAGE)
    ErrorLogger(InProcessSink(ex.pipeline)).log_error("AuthError", MESSAGE, "api", "auth",
                                                      correlation_id=run.correlation_id)


def _feed(ex, client) -> None:
    assert client.post(c.OTLP_TRACES_PATH, data=_otlp().SerializeToString(), headers=PB).status_code == 200
    assert client.post(c.OTLP_TRACES_PATH, json=to_json(_otlp())).status_code == 200
    r = client.post(c.NATIVE_SPANS_PATH, json=_native())
    assert r.status_code == 200 and r.json["rejected"] == 0, r.json
    r = client.post(c.PROFILES_PATH, query_string={"format": "folded", "workflow": LOGIN, "sample_rate": 100},
                    data=b"main;handler 10\n", headers={"Content-Type": "text/plain"})
    assert r.status_code < 300, r.data
    _sdk(ex)
    ex.pipeline.close()  # releases spans waiting for a root, flushes Loki and the run store


def _outputs(ex, client, loki: FakeLoki | None) -> dict[str, str]:
    out = {}
    with ex.db.connect() as conn:
        out["store"] = "\n".join(str(tuple(r)) for table in ("runs", "spans", "errors", "error_groups", "profiles")
                                 for r in conn.execute(text(f"SELECT * FROM {table}")))
    runs = client.get(c.RUNS_PATH, query_string={"limit": 100}).json
    out["runs api"] = orjson.dumps(runs).decode()
    ids = [r["correlation_id"] for r in (runs["runs"] if isinstance(runs, dict) else runs)]
    assert ids
    out["run api"] = "\n".join(client.get(f"{c.RUNS_PATH}/{i}").get_data(as_text=True) for i in ids)
    out["run page"] = "\n".join(client.get(f"{c.RUN_PAGE_PATH}/{i}").get_data(as_text=True) for i in ids)
    out["errors api"] = client.get(c.ERRORS_PATH).get_data(as_text=True)
    out["metrics"] = client.get(c.METRICS_PATH).get_data(as_text=True)
    if loki is not None:
        out["loki"] = orjson.dumps(loki.accepted).decode()
    return out


def _assert_clean(out: dict[str, str], caplog) -> None:
    out["logs"] = "\n".join(r.getMessage() for r in caplog.records)
    for where, body in out.items():
        for secret in SECRETS:
            assert secret not in body, f"{secret!r} leaked into {where}"


def test_no_secret_reaches_any_output(make_exporter, caplog):
    caplog.set_level(logging.DEBUG)
    loki = FakeLoki()
    try:
        ex = make_exporter(loki_url=f"http://flowscope:{DSN_PASSWORD}@127.0.0.1:{loki.port}",
                           loki_batch_wait_s=0.05)
        client = create_app(ex).test_client()
        _feed(ex, client)
        assert not loki.errors
        out = _outputs(ex, client, loki)
        assert len(loki.accepted) >= 8
        _assert_clean(out, caplog)
        # names are redacted, not dropped: the redacted label is there
        assert 'operation="POST /pay?api_key=[REDACTED]"' in out["metrics"]
        assert 'workflow="GET /login?password=[REDACTED]"' in out["metrics"]
        assert "postgresql://app:[REDACTED]@db" in out["store"]
        assert "pushing log streams to http://flowscope:****@127.0.0.1" in out["logs"]
    finally:
        loki.stop()


def test_no_secret_reaches_any_output_on_the_sdk_fast_path(make_exporter, caplog):
    """Without Loki, successful SDK steps take ``Pipeline.fast_step``: a tuple to the store, no Span."""
    caplog.set_level(logging.DEBUG)
    ex = make_exporter()
    assert ex.pipeline.metrics_only
    client = create_app(ex).test_client()
    _sdk(ex)
    _sdk(ex)  # the second time every name is a memo hit
    ex.pipeline.close()
    out = _outputs(ex, client, None)
    _assert_clean(out, caplog)
    key = {"workflow": "GET /login?password=[REDACTED]", "layer": "api", "component": "auth",
           "operation": "POST /pay?api_key=[REDACTED]", "status": "ok"}
    assert ex.store.value(c.STEP_DURATION_SECONDS + "_count", key) == 2
    assert ex.store.value(c.WORKFLOWS_IN_PROGRESS, {"workflow": "GET /login?password=[REDACTED]"}) == 0


# -- detectors ---------------------------------------------------------------------------------------------

R = Redactor()


@pytest.mark.parametrize("raw, want", [
    (f"tok {JWT} end", "tok [REDACTED] end"),
    ("postgresql://app:pw@db/x", "postgresql://app:[REDACTED]@db/x"),
    ("redis://:pw@cache:6379/0", "redis://:[REDACTED]@cache:6379/0"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [REDACTED]"),
    ("auth Bearer abcdef123456", "auth Bearer [REDACTED]"),
    (f"key {AWS_KEY_ID}.", "key [REDACTED]."),
    ("temp ASIAY34FZKBOKMUTVV7A here", "temp [REDACTED] here"),
    (f"card {CARD_SPACED} ok", "card [REDACTED] ok"),
    ("card 4111-1111-1111-1111 on 2024-01-15", "card [REDACTED] on 2024-01-15"),
    ("amex 378282246310005", "amex [REDACTED]"),
    ("cards 5555555555554444,4012888888881881", "cards [REDACTED],[REDACTED]"),
    ("aws_access_key_id=AKIAX99 x", "aws_access_key_id=[REDACTED] x"),
    ("pwd=hunter2 passwd: x2 sessionid=abc", "pwd=[REDACTED] passwd: [REDACTED] sessionid=[REDACTED]"),
    ('{"client_secret": "s", "refresh_token": "t"}', '{"client_secret": [REDACTED], "refresh_token": [REDACTED]}'),
    ("retry (token=abc), then fail", "retry (token=[REDACTED]), then fail"),  # the text's parenthesis stays
    ("connect(host=db, password=hunter2)", "connect(host=db, password=[REDACTED])"),
    ("(password=a(b)c)", "(password=[REDACTED])"),  # a parenthesis the value opened is the value's
    ("(password=ab)c)", "(password=[REDACTED])"),
    ("(auth Bearer abcdef123456)", "(auth Bearer [REDACTED])"),
])
def test_text_detectors(raw, want):
    assert R.text(raw) == want
    assert R.text(want) == want  # idempotent


@pytest.mark.parametrize("raw", [
    "order 4111111111111112 shipped",        # 16 digits, not Luhn-valid
    "order 1234567812345670 shipped",        # Luhn-valid, but 1 is no card issuer's first digit
    "at 1700000000000000000 ns, 1700000000123 ms",  # timestamps
    "uuid 550e8400-e29b-41d4-a716-446655440000",
    "trace 4bf92f3577b34da6a3ce929d0e0e4736",
    "between 2024-01-15 2024-01-16 10:30:00",
    "v4111111111111111",                     # part of a longer token
    "session.duration_ms=40 session_count=3",
    "user ana@example.com from https://shop.example/api?page=2",
    "eyJ is not a token; ASIA is a continent",
    "SELECT * FROM orders WHERE id = ? AND user = ?",
    "execute(password=%s)",
])
def test_text_leaves_what_is_not_a_secret(raw):
    assert R.text(raw) is raw


def test_secret_keys_cover_credential_names_but_not_session_metrics():
    for key in ("aws_access_key_id", "AWS_SECRET_ACCESS_KEY", "pwd", "DB_PASSWD", "session_id", "sessionId",
                "session.id", "jwt", "id_token", "private_key", "client_secret", "credentials", "access_key",
                "refresh_token", "X-Api-Key", "x-amz-signature", "cvv"):
        assert R.is_secret(key), key
    for key in ("session.duration_ms", "session_count", "user.email", "http.method", "db.statement", "rows"):
        assert not R.is_secret(key), key
    assert R.value({"session.duration_ms": 40, "session_id": "abc"}) == {"session.duration_ms": 40,
                                                                          "session_id": c.REDACTED}


@pytest.mark.parametrize("raw, want", [
    ("GET /login?password=x&page=2", "GET /login?password=[REDACTED]&page=[REDACTED]"),
    ("/cb?code=abc#access_token=t&x=", "/cb?code=[REDACTED]#access_token=[REDACTED]&x="),
    ("GET https://app:pw@api.example/v1", "GET https://app:[REDACTED]@api.example/v1"),
    ("login password=x", "login password=[REDACTED]"),
    ("GET /reset/" + JWT, "GET /reset/[REDACTED]"),
])
def test_names(raw, want):
    assert R.name(raw) == want
    assert R.name(want) == want


@pytest.mark.parametrize("raw", ["checkout", "SELECT orders", "GET /api/orders/{id}", "C# build",
                                 "SELECT * FROM t WHERE a=? AND b=?", "issue #12", "", None])
def test_names_left_alone_are_the_same_object(raw):
    assert R.name(raw) is raw


def test_the_name_memo_is_bounded():
    r = Redactor()
    for i in range(20_000):
        r.name(f"GET /orders/{i}?token=t{i}")
    assert 0 < len(r.names) <= 8192
    assert r.name("GET /orders/1?token=t1") == "GET /orders/1?token=[REDACTED]"


def test_the_clean_text_memo_never_holds_a_secret():
    r = Redactor()
    r.text("plain words")
    r.text(f"pwd={PWD}")
    assert "plain words" in r._clean and not any(PWD in s for s in r._clean)


def test_mask_url():
    assert mask_url("postgresql://app:hunter2@db:5432/flowscope") == "postgresql://app:****@db:5432/flowscope"
    assert mask_url("http://loki:3100") == "http://loki:3100"
    assert mask_url("sqlite:///var/flowscope.db") == "sqlite:///var/flowscope.db"
    assert mask_url("postgresql://db/x?sslmode=require&password=pw") == \
        "postgresql://db/x?sslmode=require&password=****"
    assert mask_url(None) is None


def test_log_filter_masks_url_passwords(caplog):
    handler = logging.Handler()
    handler.addFilter(MaskUrlFilter())
    seen = []
    handler.emit = lambda record: seen.append(record.getMessage())
    log = logging.getLogger("flowscope.test_secrets")
    log.addHandler(handler)
    try:
        log.warning("cannot reach %s", f"postgresql://app:{DSN_PASSWORD}@db/x")
        log.warning("nothing to mask: %d", 3)
    finally:
        log.removeHandler(handler)
    assert seen == ["cannot reach postgresql://app:****@db/x", "nothing to mask: 3"]


def test_flowscope_config_masks_url_passwords(monkeypatch, capsys):
    from flowscope.cli import main

    monkeypatch.setenv("FLOWSCOPE_DATABASE_URL", f"postgresql://app:{DSN_PASSWORD}@db/flowscope")
    monkeypatch.setenv("FLOWSCOPE_LOKI_URL", f"https://tenant:{PWD}@loki.example")
    assert main(["config"]) == 0
    printed = capsys.readouterr().out
    assert DSN_PASSWORD not in printed and PWD not in printed
    cfg = orjson.loads(printed)
    assert cfg["database_url"] == "postgresql://app:****@db/flowscope"
    assert cfg["loki_url"] == "https://tenant:****@loki.example"


@pytest.mark.parametrize("sql", ["UPDATE users SET password = $1 WHERE id = $2",
                                 "SELECT id FROM sessions WHERE session_id = %s",
                                 "UPDATE t SET token = %(token)s", "UPDATE t SET api_key = ?"])
def test_bind_placeholders_are_not_secrets_so_sql_keeps_its_shape(sql):
    r = Redactor()
    assert r.name(sql) == sql and r.text(sql) == sql
    assert r.text(sql.replace("$1", "hunter2").replace("%s", "hunter2").replace("%(token)s", "hunter2")
                  .replace("?", "hunter2")).count("hunter2") == 0

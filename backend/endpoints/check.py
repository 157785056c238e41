"""``flowscope endpoints check``: validate a live API against its OpenAPI document with schemathesis, and turn
what fails into a Flowscope run.

For every operation of the document, schemathesis (its Python API) generates requests from the schema:

- **valid** ones (``positive`` mode), whose responses must not be a 5xx and must conform to the document: a
  documented status code, content type and response schema (``status_code_conformance``,
  ``content_type_conformance``, ``response_schema_conformance``);
- **invalid** ones (``negative`` mode: a wrong type, a missing required field), which must be refused with a 4xx
  (``negative_data_rejection``), never a 5xx;
- **auth**: an operation whose ``security`` requires credentials is also called once with none of the
  ``--header`` values, and must answer 401 or 403.

The requests go out with ``requests`` (schemathesis's own transport trips over urllib3-future's pool in this
environment, as ``scripts/fuzz_http.py`` found); their responses are validated by schemathesis.

The check is one run of the workflow ``endpoint-check``: one step per operation (``ok``, or ``error`` with the
first failure of each kind: its check, message and a curl line that reproduces it), posted as a native batch to
a Flowscope (``POST /api/v1/spans``), so a failure is debugged like any other run: run page, error groups, logs.

    doc = load_document("http://127.0.0.1:8000/openapi.json")      # CheckError naming the problem
    result = run_check(doc, "http://127.0.0.1:8000", examples=20)
    batch = run_batch(result, service="shop", now_ns=time.time_ns())
"""

from __future__ import annotations

import shlex
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from exporter import conventions as c
from exporter.sdk.routes import OpenAPIError, parse_document, read_document, routes_from_openapi

#: Failures kept per operation and check (the first ones; the rest are counted).
KEEP_PER_CHECK = 3


class CheckError(Exception):
    """The check cannot run: a document that cannot be read or parsed, a base URL that is not one."""


@dataclass(frozen=True, slots=True)
class CheckFailure:
    method: str
    path: str
    #: positive | negative | auth
    mode: str
    #: what failed: schemathesis's failure title ("Response violates schema"), or "Auth not enforced"
    check: str
    message: str
    status: int | None
    curl: str


@dataclass(slots=True)
class OperationResult:
    method: str
    path: str
    auth: bool
    requests: int = 0
    failures: list[CheckFailure] = field(default_factory=list)
    #: failures beyond the kept ones
    more: int = 0
    #: modes that had nothing to generate (negative mode for an operation with no input)
    skipped: list[str] = field(default_factory=list)


@dataclass(slots=True)
class CheckResult:
    base_url: str
    operations: list[OperationResult]
    started_ns: int = 0
    ended_ns: int = 0

    @property
    def failures(self) -> list[CheckFailure]:
        return [f for op in self.operations for f in op.failures]

    @property
    def requests(self) -> int:
        return sum(op.requests for op in self.operations)


def load_document(source: str | Path, timeout: float = 10.0) -> dict[str, Any]:
    """The OpenAPI document at a path or http(s) URL, parsed and checked enough to run; :class:`CheckError`
    naming the problem otherwise."""
    try:
        doc = parse_document(read_document(source, timeout))
        routes_from_openapi(doc)
    except OpenAPIError as e:
        raise CheckError(str(e)) from None
    return doc


def _schema(doc: Mapping[str, Any]) -> Any:
    import schemathesis

    try:
        return schemathesis.openapi.from_dict(dict(doc))
    except Exception as e:  # noqa: BLE001 - schemathesis's loader errors have no one base; each names the problem
        raise CheckError(f"the OpenAPI document cannot be loaded: {str(e).splitlines()[0][:300]}") from None


#: Headers whose values a reproducer never shows (besides the ``--header`` ones: credentials by definition).
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


def _curl(kwargs: Mapping[str, Any], secret: frozenset[str] = frozenset()) -> str:
    """A curl line that reproduces the request; the values of ``secret`` headers (lower case: the ``--header``
    ones) and of :data:`_SECRET_HEADERS` are redacted, as the line is printed and stored in the run."""
    parts = ["curl", "-X", str(kwargs.get("method", "GET"))]
    for k, v in (kwargs.get("headers") or {}).items():
        if k.lower() not in ("user-agent", "accept-encoding", "connection", "accept"):
            hidden = k.lower() in _SECRET_HEADERS or k.lower() in secret
            parts += ["-H", f"{k}: {'[REDACTED]' if hidden else v}"]
    body = kwargs.get("data") if kwargs.get("data") is not None else kwargs.get("json")
    if body is not None:
        import json

        parts += ["-d", body if isinstance(body, str) else
                  body.decode("utf-8", "replace") if isinstance(body, bytes) else json.dumps(body)]
    url = str(kwargs.get("url", ""))
    params = kwargs.get("params")
    if params:
        url += "?" + requests.models.RequestEncodingMixin._encode_params(params)  # type: ignore[attr-defined]
    return " ".join(shlex.quote(p) for p in parts + [url])[:4000]


def _checks(mode: str) -> list[Callable[..., Any]]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    if mode == "negative":
        return [not_a_server_error, negative_data_rejection]
    return [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _keep(op: OperationResult, f: CheckFailure) -> None:
    if sum(1 for x in op.failures if x.check == f.check and x.mode == f.mode) < KEEP_PER_CHECK:
        op.failures.append(f)
    else:
        op.more += 1


def _run_mode(operation: Any, op: OperationResult, mode: str, base_url: str, headers: Mapping[str, str],
              examples: int, timeout: float, session: requests.Session) -> None:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.core.failures import Failure, FailureGroup

    checks = _checks(mode)
    secret = frozenset(k.lower() for k in headers)
    gen = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    auth_checked = [not op.auth or mode != "positive"]

    def send(kwargs: dict[str, Any]) -> requests.Response | None:
        op.requests += 1
        try:
            return session.request(**kwargs, timeout=timeout)
        except requests.RequestException as e:
            _keep(op, CheckFailure(op.method, op.path, mode, "No answer", f"{type(e).__name__}: {e}"[:500], None,
                                   _curl(kwargs, secret)))
            return None

    @seed(0)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=gen))
    def run(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=base_url, headers=dict(headers))
        resp = send(kwargs)
        if resp is None:
            return
        try:
            case.validate_response(resp, checks=checks)
        except FailureGroup as group:
            for x in group.exceptions:
                _keep(op, CheckFailure(op.method, op.path, mode, x.title, x.message[:2000], resp.status_code,
                                       _curl(kwargs, secret)))
        except Failure as x:
            _keep(op, CheckFailure(op.method, op.path, mode, x.title, x.message[:2000], resp.status_code,
                                   _curl(kwargs, secret)))
        if not auth_checked[0]:
            auth_checked[0] = True
            bare = case.as_transport_kwargs(base_url=base_url, headers={})
            given_names = {k.lower() for k in headers}
            bare["headers"] = {k: v for k, v in (bare.get("headers") or {}).items() if k.lower() not in given_names
                               and k.lower() not in ("authorization", "cookie")}
            got = send(bare)
            if got is not None and got.status_code not in (401, 403):
                _keep(op, CheckFailure(op.method, op.path, "auth", "Auth not enforced",
                                       f"the document requires credentials for {op.method} {op.path}, but a request "
                                       f"without them was answered {got.status_code} (expected 401 or 403)",
                                       got.status_code, _curl(bare, secret)))

    try:
        run()
    except Unsatisfiable:  # negative mode for an operation with no input: nothing to violate
        op.skipped.append(mode)


def run_check(doc: Mapping[str, Any], base_url: str, examples: int = 20, headers: Mapping[str, str] | None = None,
              timeout: float = 5.0, clock: Callable[[], int] | None = None) -> CheckResult:
    """Check every operation of ``doc`` against the API at ``base_url`` (seeded: the same requests every run)."""
    import time

    if not base_url.startswith(("http://", "https://")):
        raise CheckError(f"--base-url must be an http(s) URL, got {base_url[:100]!r}")
    now = clock or time.time_ns
    auth = {(r.method, r.path): bool(r.auth) for r in routes_from_openapi(doc)}
    schema = _schema(doc)
    result = CheckResult(base_url.rstrip("/"), [], started_ns=now())
    with requests.Session() as session:
        for got in schema.get_all_operations():
            try:
                operation = got.ok()
            except Exception as e:  # noqa: BLE001 - schemathesis's InvalidSchema for one operation: say which
                raise CheckError(f"an operation of the document cannot be used: {str(e).splitlines()[0][:300]}") \
                    from None
            method, path = operation.method.upper(), operation.path
            op = OperationResult(method, path, auth.get((method, path), False))
            result.operations.append(op)
            for mode in ("positive", "negative"):
                _run_mode(operation, op, mode, result.base_url, headers or {}, examples, timeout, session)
    result.ended_ns = now()
    return result


def run_batch(result: CheckResult, service: str, now_ns: int, document: str | None = None) -> dict[str, Any]:
    """The check as one native run (``POST /api/v1/spans``): the workflow ``endpoint-check``, one client step per
    operation, failed with its first failure (the rest in its metadata) when it has any."""
    cid = f"check-{uuid.uuid4().hex[:16]}"
    started = result.started_ns or now_ns
    ended = max(result.ended_ns or now_ns, started)
    step_ms = max(0.001, (ended - started) / 1e6 / max(1, len(result.operations)))
    steps: list[dict[str, Any]] = []
    for i, op in enumerate(result.operations):
        meta: dict[str, Any] = {"http.request.method": op.method, "url.template": op.path, "requests": op.requests,
                                "auth_required": op.auth, "base_url": result.base_url}
        step: dict[str, Any] = {
            "correlation_id": cid, "workflow_type": c.ENDPOINT_CHECK_WORKFLOW, "layer": "api",
            "component": service, "operation": f"{op.method} {op.path}", "kind": "client", "service": service,
            "started_at": (started + int(i * step_ms * 1e6)) / 1e9, "duration_ms": step_ms,
            "status": "error" if op.failures else "ok", "metadata": meta}
        if op.skipped:
            meta["skipped_modes"] = ",".join(op.skipped)
        if op.failures:
            first = op.failures[0]
            meta["failures"] = len(op.failures) + op.more
            if first.status is not None:
                meta["http.response.status_code"] = first.status
            step["error_type"] = f"EndpointCheck: {first.check}"[:200]
            step["error_message"] = (f"{op.method} {op.path} ({first.mode}): {first.message}\n\nReproduce: "
                                     f"{first.curl}")[:8000]
            step["stack_trace"] = "\n\n".join(f"[{f.mode}] {f.check}: {f.message}\n{f.curl}" for f in op.failures)
        steps.append(step)
    failed = any(op.failures for op in result.operations)
    workflow = {"correlation_id": cid, "workflow_type": c.ENDPOINT_CHECK_WORKFLOW, "service": service,
                "status": "error" if failed else "ok", "started_at": started / 1e9,
                "duration_ms": max(0.001, (ended - started) / 1e6),
                "metadata": {"base_url": result.base_url, "operations": len(result.operations),
                             "requests": result.requests, "failures": len(result.failures),
                             **({"document": document[:500]} if document else {})}}
    if failed:
        workflow["error_type"] = "EndpointCheckFailed"
        workflow["error_message"] = (f"{sum(1 for op in result.operations if op.failures)} of "
                                     f"{len(result.operations)} operations failed the check against "
                                     f"{result.base_url}")
    return {"workflows": [workflow], "steps": steps}


def post_batch(batch: Mapping[str, Any], flowscope_url: str, token: str | None = None,
               timeout: float = 10.0) -> str:
    """Send the run to a Flowscope; its correlation id. :class:`CheckError` when it is refused or unreachable."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = flowscope_url.rstrip("/") + c.NATIVE_SPANS_PATH
    try:
        resp = requests.post(url, json=batch, headers=headers, timeout=timeout)
    except requests.RequestException as e:
        raise CheckError(f"cannot send the check's run to {url}: {e}") from None
    if resp.status_code != 200:
        raise CheckError(f"{url} refused the check's run: HTTP {resp.status_code} {resp.text[:300]}")
    return str(batch["workflows"][0]["correlation_id"])

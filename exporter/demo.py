"""Synthetic multi-layer traffic for ``flowscope serve --demo`` and ``flowscope demo``.

Four workflows (login, product_search, cart_update, checkout) cross
frontend → api → cache/database/external/queue with realistic latencies,
injected slow steps (a slow full-text query, a slow payment gateway) and errors
(payment timeouts and declines, database connection drops, validation
failures). Runs start in real time and are emitted when they end, so
``flowscope_workflows_in_progress`` moves as it would in production.

The demo brings its own alert spec, :data:`DEMO_SPEC`, whose SLOs name these
workflows (the shipped ``alert_rules/spec/flowscope.yaml`` names none), and
keeps its runs for :data:`DEMO_RUN_RETENTION_S` unless told otherwise::

    flowscope rules build --spec alert_rules/spec/demo.yaml --out alert_rules/demo

:func:`generate_run` is pure given its RNG: tests and benchmarks use it.
"""

from __future__ import annotations

import heapq
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from . import conventions as c
from .config import Config, load_config
from .model import new_span_id

log = logging.getLogger("flowscope.demo")

#: The demo's alert spec and where ``flowscope rules build`` writes its rules (Prometheus loads them from there).
DEMO_SPEC = "alert_rules/spec/demo.yaml"
DEMO_RULES_DIR = "alert_rules/demo"
#: Run retention of ``serve --demo`` when none is configured: at 20 runs/s the store grows ~290 MB an hour,
#: and a demo needs the last hour, not the default 30 days.
DEMO_RUN_RETENTION_S = 3600.0


def demo_defaults() -> Config:
    """The settings ``serve --demo`` starts from, before the YAML file, the environment and the arguments.

    Pass it as ``load_config(..., base=demo_defaults())``: anything the user sets still wins.
    """
    return load_config({"run_retention_s": DEMO_RUN_RETENTION_S}, environ={})


@dataclass(frozen=True)
class StepSpec:
    layer: str
    component: str
    operation: str
    median_ms: float
    slow_p: float = 0.0  # probability of an injected slow step
    slow_ms: float = 0.0
    errors: tuple[tuple[str, float, str, str], ...] = ()  # (error_type, probability, status, message)


WORKFLOWS: dict[str, tuple[float, tuple[StepSpec, ...]]] = {
    "login": (0.35, (
        StepSpec("frontend", "web-app", "submit_login", 40),
        StepSpec("api", "auth-service", "POST /api/login", 25, errors=(
            ("InvalidCredentials", 0.03, "error", "invalid username or password"),)),
        StepSpec("cache", "redis", "GET session", 1.2),
        StepSpec("database", "postgres", "SELECT users", 6, slow_p=0.01, slow_ms=400),
        StepSpec("external", "oauth-provider", "verify_token", 80, errors=(
            ("UpstreamTimeout", 0.005, "timeout", "oauth provider timed out after 3000 ms"),)),
    )),
    "product_search": (0.35, (
        StepSpec("frontend", "web-app", "search_page", 60),
        StepSpec("api", "catalog-service", "GET /api/search", 20),
        StepSpec("cache", "redis", "GET search_results", 1.0),
        StepSpec("database", "postgres", "full_text_search", 35, slow_p=0.05, slow_ms=900),
    )),
    "cart_update": (0.2, (
        StepSpec("frontend", "web-app", "update_cart", 30),
        StepSpec("api", "cart-service", "PUT /api/cart", 15, errors=(
            ("ValidationError", 0.02, "error", "quantity must be between 1 and 99"),)),
        StepSpec("database", "postgres", "UPDATE cart_items", 8, errors=(
            ("DBConnectionError", 0.005, "error", "connection to 10.0.3.7:5432 refused"),)),
        StepSpec("cache", "redis", "SET cart", 1.1),
        StepSpec("queue", "kafka", "publish cart_updated", 4),
    )),
    "checkout": (0.1, (
        StepSpec("frontend", "web-app", "checkout_page", 80),
        StepSpec("api", "order-service", "POST /api/checkout", 40, slow_p=0.03, slow_ms=700),
        StepSpec("database", "postgres", "INSERT orders", 12, errors=(
            ("DeadlockDetected", 0.003, "error", "deadlock detected on relation orders"),)),
        StepSpec("external", "payment-gateway", "charge_card", 350, slow_p=0.08, slow_ms=1800, errors=(
            ("PaymentTimeout", 0.03, "timeout", "payment gateway timed out after 5000 ms"),
            ("CardDeclined", 0.02, "error", "card declined: insufficient funds"))),
        StepSpec("queue", "rabbitmq", "publish order_created", 5),
    )),
}


def _latency_ms(rng: random.Random, spec: StepSpec) -> float:
    ms = rng.lognormvariate(0, 0.35) * spec.median_ms
    if spec.slow_p and rng.random() < spec.slow_p:
        ms += spec.slow_ms * rng.uniform(0.7, 1.5)
    return ms


def generate_run(rng: random.Random, start_s: float, workflow: str | None = None) -> dict:
    """One run in the native JSON shape: ``{"workflows": [run], "steps": [...]}``.

    Steps nest: the frontend step is the parent of the API step, which is the
    parent of the backend calls, made one after another. The first failing
    step fails the run, and the steps after it are skipped.
    """
    names = list(WORKFLOWS)
    if workflow is None:
        workflow = rng.choices(names, weights=[WORKFLOWS[n][0] for n in names])[0]
    specs = WORKFLOWS[workflow][1]
    cid = uuid.UUID(int=rng.getrandbits(128), version=4).hex
    user = f"user-{rng.randrange(5000)}"
    fe_id, api_id = new_span_id(), new_span_id()
    t = start_s + rng.uniform(0.5, 3) / 1000
    steps: list[dict] = []
    failure = None
    cart = {"items": rng.randint(1, 6)}
    for spec in specs[2:]:
        dur = _latency_ms(rng, spec)
        status, etype, emsg = "success", None, None
        for et, p, st, msg in spec.errors:
            if rng.random() < p:
                status, etype, emsg = st, et, msg
                if st == "timeout":
                    dur = max(dur, float(msg.rsplit(" ", 2)[-2]))
                break
        rec = {"correlation_id": cid, "workflow_type": workflow, "layer": spec.layer, "component": spec.component,
               "operation": spec.operation, "status": status, "started_at": t, "duration_ms": round(dur, 3),
               "span_id": new_span_id(), "parent_span_id": api_id, "service": spec.component,
               "state": {"step": spec.operation, **cart,
                         spec.component: {"status": status, "ms": round(dur, 1)}}}
        if etype:
            rec.update(error_type=etype, error_message=emsg)
            failure = (etype, emsg)
        if spec.layer == "database":
            # what the SDK's SQLAlchemy instrumentation would flag: slow (the spec's 100 ms) or N+1 (~3 %,
            # derived from the duration so the random sequence, and every seeded run, stays as it was)
            pattern = (c.QUERY_SLOW if dur >= 100 else c.QUERY_N_PLUS_ONE if int(dur * 1000) % 37 == 0 else None)
            rec["metadata"] = {c.ATTR_DB_STATEMENT: f"{spec.operation} WHERE id = ?"}
            if pattern:
                rec["metadata"][c.ATTR_DB_PATTERN] = pattern
        steps.append(rec)
        t += dur / 1000 + rng.uniform(0.2, 1) / 1000
        if failure:
            break
    api_spec, fe_spec = specs[1], specs[0]
    api_start = start_s + rng.uniform(0.1, 0.4) / 1000
    api_end = t + _latency_ms(rng, api_spec) / 1000
    api_status, api_et, api_em = ("error", failure[0], failure[1]) if failure else ("success", None, None)
    if not failure:
        for et, p, st, msg in api_spec.errors:
            if rng.random() < p:
                api_status, api_et, api_em = st, et, msg
                failure = (et, msg)
                break
    api = {"correlation_id": cid, "workflow_type": workflow, "layer": "api", "component": api_spec.component,
           "operation": api_spec.operation, "status": api_status, "started_at": api_start,
           "duration_ms": round((api_end - api_start) * 1000, 3), "span_id": api_id, "parent_span_id": fe_id,
           "service": api_spec.component}
    if api_et:
        api.update(error_type=api_et, error_message=api_em)
    fe_end = api_end + _latency_ms(rng, fe_spec) / 1000
    fe = {"correlation_id": cid, "workflow_type": workflow, "layer": "frontend", "component": fe_spec.component,
          "operation": fe_spec.operation, "status": "error" if failure else "success", "started_at": start_s,
          "duration_ms": round((fe_end - start_s) * 1000, 3), "span_id": fe_id, "service": "web-app"}
    if failure:
        fe.update(error_type=failure[0], error_message=failure[1])
    run = {"correlation_id": cid, "workflow_type": workflow, "status": "failed" if failure else "success",
           "started_at": start_s, "duration_ms": round((fe_end - start_s) * 1000 + 0.2, 3), "user": user,
           "service": "web-app"}
    if failure:
        run.update(error_type=failure[0], error_message=failure[1])
    return {"workflows": [run], "steps": [fe, api, *steps]}


_FRAMES = {
    "login": ["auth.views:login", "auth.service:verify_password", "bcrypt:checkpw", "oauth.client:verify_token",
              "ssl:read", "redis.client:get", "psycopg:execute", "json:dumps"],
    "product_search": ["catalog.views:search", "catalog.search:rank", "catalog.search:tokenize", "re:_compile",
                       "psycopg:execute", "redis.client:get", "json:dumps", "jinja2:render"],
    "cart_update": ["cart.views:update", "cart.service:validate", "pydantic:validate", "psycopg:execute",
                    "kafka.producer:send", "redis.client:set", "json:dumps"],
    "checkout": ["orders.views:checkout", "orders.service:create_order", "payments.client:charge", "ssl:read",
                 "psycopg:execute", "pika:basic_publish", "decimal:quantize", "json:dumps"],
}


def generate_profile(rng: random.Random, workflow: str, samples: int = 200) -> str:
    """Folded stacks for one workflow, as py-spy --format raw writes them (pure given its RNG)."""
    frames = _FRAMES[workflow]
    lines: dict[str, int] = {}
    for _ in range(samples):
        depth = rng.randint(1, 3)
        stack = ["gunicorn:run", "flask.app:wsgi_app", frames[0]] + rng.sample(frames[1:], depth)
        key = ";".join(stack)
        lines[key] = lines.get(key, 0) + 1
    return "\n".join(f"{k} {v}" for k, v in sorted(lines.items())) + "\n"


class DemoTraffic:
    """A background thread that starts ``rate`` runs per second and delivers each when it ends.

    ``deliver(batch)`` gets native JSON batches; ``on_start(workflow)`` /
    ``on_end(workflow)`` drive the in-progress gauge when in-process. With ``total``, it
    starts that many runs, delivers each when it ends, then calls ``on_done()`` and stops;
    :meth:`stop` delivers the runs still in flight, so none is lost either way.
    :attr:`runs` counts the runs delivered, :attr:`failed` those whose delivery failed
    (:attr:`last_error` says why).
    """

    def __init__(self, deliver: Callable[[dict], None], rate: float = 20.0, seed: int | None = None,
                 on_start: Callable[[str], None] | None = None, on_end: Callable[[str], None] | None = None,
                 tick_s: float = 0.25, on_profile: Callable[[str, str], None] | None = None,
                 total: int | None = None, on_done: Callable[[], None] | None = None):
        if not rate > 0:
            raise ValueError(f"rate must be above 0 runs per second, got {rate!r}")
        self.deliver, self.rate, self.tick_s = deliver, rate, tick_s
        self.on_start, self.on_end = on_start, on_end
        #: (workflow, folded text, correlation_id of a recent run of it), about once a second per workflow
        self.on_profile = on_profile
        self.total, self.on_done = total, on_done
        self.rng = random.Random(seed)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flowscope-demo", daemon=True)
        self.runs = 0
        self.failed = 0
        self.last_error: str | None = None

    def start(self) -> DemoTraffic:
        self._thread.start()
        return self

    def _run(self) -> None:
        pending: list[tuple[float, int, dict]] = []
        seq = 0
        carry = 0.0
        next_profile = 0.0
        recent: dict[str, str] = {}
        total = self.total
        while not self._stop.wait(self.tick_s):
            now = time.time()
            carry += self.rate * self.tick_s
            n, carry = int(carry), carry - int(carry)
            if total is not None:
                n = min(n, total - seq)
            for _ in range(n):
                start = now - self.rng.uniform(0, self.tick_s)
                batch = generate_run(self.rng, start)
                run = batch["workflows"][0]
                end = run["started_at"] + run["duration_ms"] / 1000
                heapq.heappush(pending, (end, seq, batch))
                seq += 1
                recent[run["workflow_type"]] = run["correlation_id"]
                if self.on_start:
                    self.on_start(run["workflow_type"])
            if self.on_profile and now >= next_profile:
                next_profile = now + 1.0
                for wf in WORKFLOWS:
                    try:
                        self.on_profile(wf, generate_profile(self.rng, wf), recent.get(wf))
                    except Exception as e:  # noqa: BLE001 - a failed delivery must not stop the demo
                        log.warning("demo profile delivery failed: %s", e)
            self._deliver(pending, now)
            if total is not None and seq >= total and not pending:
                break
        self._deliver(pending, float("inf"))  # stopped early: the runs in flight end now
        if self.on_done is not None:
            self.on_done()

    def _deliver(self, pending: list[tuple[float, int, dict]], until: float) -> None:
        """Deliver, in one batch, the pending runs that ended by ``until``."""
        ready = {"workflows": [], "steps": []}
        while pending and pending[0][0] <= until:
            _, _, b = heapq.heappop(pending)
            ready["workflows"] += b["workflows"]
            ready["steps"] += b["steps"]
        if not ready["workflows"]:
            return
        try:
            self.deliver(ready)
            self.runs += len(ready["workflows"])
        except Exception as e:  # noqa: BLE001 - a failed delivery must not stop the demo
            self.failed += len(ready["workflows"])
            self.last_error = str(e) or type(e).__name__
            log.warning("demo delivery failed: %s", e)
        if self.on_end:
            for r in ready["workflows"]:
                self.on_end(r["workflow_type"])

    def stop(self) -> None:
        """Stop starting runs and deliver those in flight (a delivery is bounded by its own timeout)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

"""Root-cause attribution on injected faults: does the top finding name the cause, and how long does it take?

Each trial builds a fresh SQLite store and fills it with ``checkout`` runs through the real ingest paths
(OTLP protobuf over the app, or native JSON for run metadata), every run a server span and three client
spans (database, cache, payment) from one of 12 pods (each with its ``service.version``,
``cloud.region``, ``k8s.pod.name``), with:

- background noise: 2–6 % of runs fail for no reason, log-normal latency, a dozen unrelated attributes
  (browser, customer tier, feature flag, row counts, IDs, client addresses);
- symptoms on every failure: ``error.type``, ``http.response.status_code`` 500/502,
  ``rpc.grpc.status_code``, an ``exception`` event and the OTel error status;
- confounders by construction: pods belong to one version and one region, the customer tier is
  correlated with the payment provider, regions with versions;
- one injected cause per trial, its strength drawn at random (a failure probability of 0.2–0.8):

  ``version``/``region``/``pod`` (OTLP resource attributes), ``provider`` (a span attribute), ``confounded``
  (the provider again, with enterprise customers using it 70 % of the time), ``pair`` (one browser with one
  provider, neither alone), ``numeric`` (payloads above a random threshold between 4e5 and 2.5e6 bytes),
  ``latency`` (one database replica slow, ``select=slow``: the p90), ``step_latency`` (the payment step slow
  for one tier, ``select=slow&operation=charge&threshold_ms=…``), ``metadata`` (one tenant in the native
  ``workflows[].metadata``).

The query goes through a real HTTP server on 127.0.0.1 (``GET /api/v1/attribution``); top-1 is right when the
first finding's conditions are the cause's (a numeric threshold within a factor 1.4 of the injected one).
It ends with the grouping purity of error fingerprints on message templates with variable parts, from
``bench/fingerprints.py``'s generator (45 kinds, several SDK type names each), in the same run.

    .venv/bin/python bench/attribution.py [--seeds 5] [--seed 1] [--large-runs 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import orjson
import requests
from werkzeug.serving import make_server

logging.getLogger("werkzeug").setLevel(logging.ERROR)

from backend.app import create_app
from exporter import conventions as c
from exporter.config import load_config
from exporter.runtime import build
from tests.otlp_data import request, span

SCENARIOS = ("version", "region", "pod", "provider", "confounded", "pair", "numeric", "latency", "step_latency",
             "metadata")
VERSIONS = ("1.2.2", "1.2.3", "1.2.4")
REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")
BROWSERS = (("chrome", 0.5), ("safari", 0.25), ("firefox", 0.17), ("edge", 0.08))
PROVIDERS = (("stripe", 0.45), ("adyen", 0.3), ("braintree", 0.25))
TIERS = (("free", 0.6), ("pro", 0.3), ("enterprise", 0.1))
TENANTS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "tyrell")


def _pick(rng: random.Random, table) -> str:
    x, acc = rng.random(), 0.0
    for v, p in table:
        acc += p
        if x < acc:
            return v
    return table[-1][0]


class World:
    """The fixed parts of one trial: pods and the cause."""

    def __init__(self, rng: random.Random, scenario: str):
        self.rng, self.scenario = rng, scenario
        self.pods = []
        for k in range(12):
            version = VERSIONS[k // 4]
            region = REGIONS[k % 3] if rng.random() < 0.6 else rng.choice(REGIONS)
            self.pods.append({"service.version": version, "cloud.region": region,
                              "k8s.pod.name": f"shop-{version.replace('.', '')}-{rng.randrange(16**5):05x}",
                              "host.name": f"node-{k % 5}", "deployment.environment": "prod",
                              "telemetry.sdk.language": "python"})
        self.p_fail = rng.uniform(0.2, 0.8)
        self.p_noise = rng.uniform(0.02, 0.06)
        self.bad_version = rng.choice(VERSIONS[1:])
        self.bad_region = rng.choice(REGIONS)
        self.bad_pod = rng.randrange(12)
        self.threshold = 10 ** rng.uniform(5.6, 6.4)
        self.bad_provider = rng.choice(("adyen", "braintree"))
        self.bad_pair = (rng.choice(("safari", "firefox")), rng.choice(("adyen", "braintree")))
        self.slow_replica = f"db-{rng.randrange(1, 4)}.internal"
        self.slow_tier = rng.choice(("pro", "enterprise"))
        self.bad_tenant = rng.choice(TENANTS[:5])
        self.step_threshold_ms = 250.0

    def cause(self) -> list[tuple[str, str, object]]:
        s = self.scenario
        return {
            "version": [("resource.service.version", "=", self.bad_version)],
            "region": [("resource.cloud.region", "=", self.bad_region)],
            "pod": [("resource.k8s.pod.name", "=", self.pods[self.bad_pod]["k8s.pod.name"])],
            "provider": [("attr.payment.provider", "=", self.bad_provider)],
            "confounded": [("attr.payment.provider", "=", "adyen")],
            "pair": sorted([("attr.browser.name", "=", self.bad_pair[0]),
                            ("attr.payment.provider", "=", self.bad_pair[1])]),
            "numeric": [("attr.payload.bytes", ">", self.threshold)],
            "latency": [("attr.server.address", "=", self.slow_replica)],
            "step_latency": [("attr.customer.tier", "=", self.slow_tier)],
            "metadata": [("metadata.tenant", "=", self.bad_tenant)],
        }[s]

    def query(self) -> str:
        if self.scenario == "latency":
            return "select=slow&percentile=90"
        if self.scenario == "step_latency":
            return f"select=slow&operation=charge&threshold_ms={self.step_threshold_ms}"
        return "select=failed"

    def run(self, i: int) -> dict:
        """One run's facts: pod, attributes, whether and where it fails, durations (ms)."""
        rng, s = self.rng, self.scenario
        pod = rng.randrange(12)
        tier = _pick(rng, TIERS)
        if s == "confounded" and tier == "enterprise":
            provider = "adyen" if rng.random() < 0.7 else rng.choice(("stripe", "braintree"))
        else:
            provider = _pick(rng, PROVIDERS)
        r = {"pod": pod, "browser": _pick(rng, BROWSERS), "tier": tier, "provider": provider,
             "payload": int(10 ** rng.uniform(3, 7)), "replica": f"db-{rng.randrange(1, 4)}.internal",
             "hit": rng.random() < 0.85, "flag": rng.random() < 0.5, "rows": rng.randrange(0, 400),
             "tenant": rng.choice(TENANTS), "plan": rng.choice(("monthly", "yearly")),
             "db_ms": rng.lognormvariate(math.log(15), 0.4), "cache_ms": rng.lognormvariate(math.log(1), 0.3),
             "pay_ms": rng.lognormvariate(math.log(120), 0.35)}
        if r["hit"] is False:
            r["cache_ms"] *= 3
        hit = {
            "version": self.pods[pod]["service.version"] == self.bad_version,
            "region": self.pods[pod]["cloud.region"] == self.bad_region,
            "pod": pod == self.bad_pod,
            "provider": provider == self.bad_provider,
            "confounded": provider == "adyen",
            "pair": (r["browser"], provider) == self.bad_pair,
            "numeric": r["payload"] > self.threshold,
            "metadata": r["tenant"] == self.bad_tenant,
        }.get(s, False)
        fails = (hit and rng.random() < self.p_fail) or rng.random() < self.p_noise
        r["fail"] = ("payment" if rng.random() < 0.7 else "database") if fails else None
        if s == "latency" and r["replica"] == self.slow_replica:
            r["db_ms"] *= rng.uniform(6, 10)
        if s == "step_latency" and tier == self.slow_tier:
            r["pay_ms"] += rng.uniform(150, 400)
        return r


def _otlp(world: World, runs: list[dict], now: int) -> list[bytes]:
    """One protobuf request per pod: its resource, and each run's four spans."""
    per_pod: dict[int, list] = {}
    for i, r in enumerate(runs):
        start = now - int(3600e9 * (1 - i / len(runs))) - 10**9
        root = span("POST /checkout", kind=2, start=start, duration_ns=0, attrs={
            "flowscope.workflow": "checkout", "http.request.method": "POST", "http.route": "/checkout",
            "browser.name": r["browser"], "customer.tier": r["tier"], "feature.flag.new_cart": r["flag"],
            "request.id": f"req-{i:07d}-{world.rng.randrange(10**9)}",
            "client.address": f"203.0.{world.rng.randrange(256)}.{world.rng.randrange(256)}",
            "http.response.status_code": 500 if r["fail"] else 200,
            **({"error.type": "PaymentFailed" if r["fail"] == "payment" else "DatabaseError"} if r["fail"] else {})},
            error=bool(r["fail"]), message="checkout failed" if r["fail"] else "")
        t = start + 2 * 10**6
        kids = []
        for name, kind, ms, attrs, failing in (
                ("SELECT orders", 3, r["db_ms"], {"db.system": "postgresql", "db.name": "shop",
                                                  "db.operation": "SELECT", "server.address": r["replica"],
                                                  "db.rows": r["rows"]}, r["fail"] == "database"),
                ("GET cart", 3, r["cache_ms"], {"db.system": "redis", "server.address": "cache-1.internal",
                                                "cache.hit": r["hit"]}, False),
                ("charge", 3, r["pay_ms"], {"http.request.method": "POST", "server.address": "pay.example",
                                            "payment.provider": r["provider"], "payload.bytes": r["payload"],
                                            "http.response.status_code": 502 if failing_pay(r) else 200},
                 failing_pay(r))):
            extra = {}
            events = ()
            if failing:
                extra = {"error.type": "TimeoutError" if name == "charge" else "OperationalError",
                         "rpc.grpc.status_code": 14}
                events = [("exception", {"exception.type": extra["error.type"],
                                         "exception.message": f"{name} failed after {int(ms)} ms"})]
            kids.append(span(name, trace_id=root["trace_id"], parent=root["span_id"], kind=kind, start=t,
                             duration_ns=int(ms * 1e6), attrs={**attrs, **extra}, error=failing,
                             message=f"{name} failed" if failing else "", events=events))
            t += int(ms * 1e6)
        root["end"] = t + 10**6
        per_pod.setdefault(r["pod"], []).extend(kids + [root])
    out = []
    for pod, spans in per_pod.items():
        for k in range(0, len(spans), 2000):
            out.append(request(spans[k:k + 2000], service="shop", resource=world.pods[pod]).SerializeToString())
    return out


def failing_pay(r: dict) -> bool:
    return r["fail"] == "payment"


def _native(world: World, runs: list[dict], now: int) -> list[bytes]:
    """Native batches: each run a workflow record with metadata (tenant, plan) and three steps."""
    docs, wfs, steps = [], [], []
    for i, r in enumerate(runs):
        cid = f"run-{i:07d}"
        start = now / 1e9 - 3600 * (1 - i / len(runs)) - 1
        t = start + 0.002
        for layer, comp, op, ms, attrs, failing in (
                ("database", "postgres", "SELECT orders", r["db_ms"], {"db.rows": r["rows"]}, r["fail"] == "database"),
                ("cache", "redis", "GET cart", r["cache_ms"], {"cache.hit": r["hit"]}, False),
                ("external", "payments", "charge", r["pay_ms"], {"payment.provider": r["provider"],
                                                                 "payload.bytes": r["payload"]}, failing_pay(r))):
            rec = {"correlation_id": cid, "workflow_type": "checkout", "layer": layer, "component": comp,
                   "operation": op, "status": "failed" if failing else "success", "started_at": t,
                   "duration_ms": ms, "metadata": {**attrs, "browser.name": r["browser"],
                                                   "customer.tier": r["tier"]}}
            if failing:
                rec["error_type"] = "TimeoutError"
                rec["error_message"] = f"{op} failed after {int(ms)} ms"
                rec["metadata"]["http.response.status_code"] = 502
            steps.append(rec)
            t += ms / 1000
        wfs.append({"correlation_id": cid, "workflow_type": "checkout", "status": "failed" if r["fail"] else "success",
                    "started_at": start, "duration_ms": (t - start) * 1000 + 1,
                    "metadata": {"tenant": r["tenant"], "plan": r["plan"], "request.id": f"req-{i}"},
                    **({"error_type": "CheckoutFailed"} if r["fail"] else {})})
        if len(steps) >= 3000:
            docs.append(orjson.dumps({"workflows": wfs, "steps": steps}))
            wfs, steps = [], []
    if steps:
        docs.append(orjson.dumps({"workflows": wfs, "steps": steps}))
    return docs


class Server:
    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


def correct(world: World, finding: dict | None) -> bool:
    if finding is None:
        return False
    got = sorted((x["dimension"], x["op"], x["value"]) for x in finding["conditions"])
    want = world.cause()
    if len(got) != len(want):
        return False
    for (gd, go, gv), (wd, wo, wv) in zip(got, want):
        if (gd, go) != (wd, wo):
            return False
        if wo == "=" and gv != wv:
            return False
        if wo != "=" and abs(math.log10(float(gv) / float(wv))) > math.log10(1.4):
            return False
    return True


def trial(scenario: str, seed: int, n_runs: int, repeat: int, tmp: str) -> tuple[bool, list[float], dict]:
    rng = random.Random(f"{scenario}-{seed}-{n_runs}")
    world = World(rng, scenario)
    runs = [world.run(i) for i in range(n_runs)]
    now = time.time_ns()
    url = f"sqlite:///{tmp}/{scenario}-{seed}-{n_runs}.db"
    ex = build(load_config({"database_url": url, "trace_timeout_s": 600}, environ={}))
    app = create_app(ex)
    try:
        client = app.test_client()
        if scenario == "metadata":
            for body in _native(world, runs, now):
                r = client.post(c.NATIVE_SPANS_PATH, data=body, content_type="application/json")
                assert r.status_code in (200, 202), r.data[:300]
        else:
            for body in _otlp(world, runs, now):
                r = client.post(c.OTLP_TRACES_PATH, data=body, content_type="application/x-protobuf")
                assert r.status_code == 200, r.data[:300]
        assert ex.pipeline.recorder.flush(120)
        srv = Server(app)
        try:
            times, body = [], None
            for _ in range(repeat):
                t = time.perf_counter()
                resp = requests.get(f"{srv.url}{c.ATTRIBUTION_PATH}?workflow=checkout&{world.query()}", timeout=60)
                times.append(time.perf_counter() - t)
                assert resp.status_code == 200, resp.text[:300]
                body = resp.json()
        finally:
            srv.stop()
        top = body["findings"][0] if body["findings"] else None
        return correct(world, top), times, {"top": top, "want": world.cause(), "runs": body["runs"],
                                            "selected": body["selected_runs"], "p_fail": world.p_fail}
    finally:
        ex.close()


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[max(0, math.ceil(0.95 * len(xs)) - 1)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=5, help="trials per scenario at the small size")
    ap.add_argument("--seed", type=int, default=1, help="first seed")
    ap.add_argument("--small-runs", type=int, default=1500)
    ap.add_argument("--large-runs", type=int, default=20_000)
    ap.add_argument("--large-seeds", type=int, default=1, help="trials per scenario at the large size")
    ap.add_argument("--repeat", type=int, default=5, help="queries per trial, for the latency figure")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    tmp = tempfile.mkdtemp()
    for n_runs, seeds in ((args.small_runs, args.seeds), (args.large_runs, args.large_seeds)):
        if not seeds or not n_runs:
            continue
        hits, total, times = 0, 0, []
        per: dict[str, list[bool]] = {}
        t0 = time.perf_counter()
        for scenario in scenarios:
            for seed in range(args.seed, args.seed + seeds):
                ok, ts, info = trial(scenario, seed, n_runs, args.repeat, tmp)
                hits += ok
                total += 1
                times += ts
                per.setdefault(scenario, []).append(ok)
                if args.verbose or not ok:
                    top = info["top"]
                    got = [(x["dimension"], x["op"], x["value"]) for x in top["conditions"]] if top else None
                    print(f"  {'ok  ' if ok else 'MISS'} {scenario:12s} seed {seed}: want {info['want']}, got {got} "
                          f"(log10 p {top['log10_p'] if top else None}; {info['selected']} of {info['runs']} runs "
                          f"selected, p_fail {info['p_fail']:.2f})", flush=True)
        print(f"== {n_runs:,} runs per store: top-1 {hits}/{total} = {100 * hits / total:.1f} % (target >= 95 %); "
              f"query p95 {1000 * p95(times):.0f} ms, median {1000 * statistics.median(times):.0f} ms over "
              f"{len(times)} HTTP queries (target < 1000 ms); {time.perf_counter() - t0:.0f} s ==")
        print("   per scenario: " + ", ".join(f"{s} {sum(v)}/{len(v)}" for s, v in per.items()), flush=True)
    shutil.rmtree(tmp, ignore_errors=True)
    from fingerprints import generate, score  # bench/fingerprints.py, beside this file

    from exporter.fingerprint import fingerprint

    errors = generate(20_000, args.seed)
    s = score([k for k, _, _ in errors], [fingerprint(t, m)[0] for _, t, m in errors])
    print(f"== grouping purity {s['purity']:.3f} (target >= 0.95), {s['groups']} groups for {s['kinds']} kinds "
          f"({len(s['merged_kinds'])} kinds merged, {len(s['split'])} split) over {len(errors):,} errors ==")


if __name__ == "__main__":
    main()

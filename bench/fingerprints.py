"""Error grouping purity on message templates with variable parts: Flowscope's fingerprints vs the old miner.

The generator (below, seeded) draws errors from ``KINDS``: each kind is one real error, a template
with variable parts (numbers, order ids, hex, UUIDs, e-mails, IPs with ports, quoted values, paths,
host and pod names, user names, timestamps, durations) and an exception type written the way
several SDKs write it (``__main__.PaymentDeclined``, ``PaymentDeclined``,
``com.shop.PaymentDeclinedException``). Kinds that differ only in a constant word sit side by side
(``failed to reserve inventory`` / ``failed to capture payment for order N``). Frequencies are
Zipf-like. A few kinds are hard on purpose and left in: two that masking merges by design (a
constant inside quotes, a status code written as a number), names where no keyword announces them
(``{name} does not have access``), bucket names with a constant prefix, Python ``KeyError`` whose
message is only the quoted key. Order ids drawn without a digit (about 1 in 5) are not recognised.

Figures, per grouping:

- **purity**: each group's share of its most common kind, weighted by size (1.0: no group mixes kinds);
- **inverse purity**: each kind's share in its largest group (1.0: no kind is split);
- **groups / kinds** (over-splitting: 1.0 is one group per kind) and the kinds merged with another.

"old miner" is the Drain-style miner Flowscope used before (masking, then positions that differ
become ``<*>``), kept here to compare in the same run.

The store timing writes failed runs whose exception is raised through two callers (three error
spans a run) as the recorder does, and checks each run's origin is counted once.

    .venv/bin/python bench/fingerprints.py [--n 20000] [--seed 7] [--verbose] [--store-runs 5000]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import string
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter.fingerprint import fingerprint, legacy_mask

NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory", "niaj",
         "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yusuf", "zoe", "amara", "bjorn",
         "chen", "dmitri", "elena", "farah", "gustavo", "hana", "ines", "jamal", "kenji", "lucia", "marta"]
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka", "tyrell", "soylent"]
SERVICES = ["payments", "inventory", "checkout", "search", "users", "billing"]


def _name(r: random.Random) -> str:
    n = r.choice(NAMES)
    return n + str(r.randint(1, 99)) if r.random() < 0.3 else n


def _b36(r: random.Random, k: int) -> str:
    return "".join(r.choice(string.ascii_lowercase + string.digits) for _ in range(k))


V = {
    "num": lambda r: str(r.randint(1, 10 ** r.randint(1, 7))),
    "ms": lambda r: str(r.randint(100, 30000)),
    "dur": lambda r: r.choice([f"{r.randint(1, 60)}s", f"{r.randint(100, 9000)}ms", f"{r.uniform(0.1, 9):.2f}s"]),
    "pct": lambda r: str(r.randint(80, 100)),
    "ordid": lambda r: "ord_" + _b36(r, 5),
    "hex": lambda r: "".join(r.choice("0123456789abcdef") for _ in range(r.choice([8, 12, 16, 32]))),
    "uuid": lambda r: str(uuid.UUID(int=r.getrandbits(128))),
    "email": lambda r: f"{r.choice(NAMES)}.{_b36(r, 3)}@{r.choice(['example.com', 'mail.io', 'shop.co.uk'])}",
    "ip": lambda r: ".".join(str(r.randint(1, 254)) for _ in range(4)),
    "port": lambda r: str(r.choice([443, 5432, 6379, 8080, r.randint(1024, 65535)])),
    "quoted": lambda r: "'" + r.choice(["abc", "12-34", "n/a", "", "x y z", _b36(r, 6), "+1 555 0100"]) + "'",
    "path": lambda r: f"/var/lib/app/{r.choice(['cache', 'uploads', 'tmp'])}/{_b36(r, 8)}.{r.choice(['json', 'db'])}",
    "name": _name,
    "tenant": lambda r: r.choice(TENANTS),
    "host": lambda r: f"{r.choice(SERVICES)}-{r.randint(1, 9)}.internal",
    "pod": lambda r: f"{r.choice(SERVICES)}-{_b36(r, 9)}-{_b36(r, 5)}",
    "ts": lambda r: f"2025-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:"
                    f"{r.randint(0, 59):02d}Z",
    "last4": lambda r: f"{r.randint(0, 9999):04d}",
    "ver": lambda r: f"{r.randint(1, 3)}.{r.randint(0, 20)}.{r.randint(0, 9)}",
    "bucket": lambda r: f"{r.choice(TENANTS)}-uploads-{r.randint(1, 9)}",
    "local": lambda r: f"<local{r.randint(1, 9)}>",
}


def _types(name: str) -> list[str]:
    """How SDKs name one exception: OTel Python (module-qualified), type(e).__name__, a package path, Java
    (``OrderError`` there is ``OrderException``)."""
    return [f"__main__.{name}", f"app.errors.{name}", name, f"com.shop.{name.removesuffix('Error')}Exception"]


#: (exception type variants, template): one kind per row. ``{var}`` draws from V.
KINDS: list[tuple[list[str], str]] = [
    (_types("OrderError"), "failed to reserve inventory for order {num}"),
    (_types("OrderError"), "failed to capture payment for order {num}"),
    (_types("OrderError"), "failed to release inventory for order {ordid}"),
    (_types("OrderError"), "order {ordid} already shipped"),
    (_types("OrderError"), "order {ordid} already cancelled"),
    (_types("UserNotFound"), "user {name} not found"),
    (_types("PermissionDenied"), "user {name} is not allowed to delete project {num}"),
    (_types("PermissionDenied"), "user {name} is not allowed to archive project {num}"),
    (["TimeoutError", "builtins.TimeoutError", "java.util.concurrent.TimeoutException"],
     "timeout after {ms} ms calling {ip}:{port}"),
    (["TimeoutError", "builtins.TimeoutError", "java.util.concurrent.TimeoutException"],
     "read timed out after {dur} talking to host {host}"),
    (["ConnectionRefusedError", "builtins.ConnectionRefusedError"], "connection to {ip}:{port} refused"),
    (_types("ValidationError"), "invalid email address {email}"),
    (_types("ValidationError"), "invalid phone number {quoted}"),
    (_types("ValidationError"), "field {quoted} is required"),
    (["IntegrityError", "sqlalchemy.exc.IntegrityError"],
     'duplicate key value violates unique constraint "orders_pkey": Key (id)=({num}) already exists'),
    (["FileNotFoundError", "builtins.FileNotFoundError"], "no such file or directory: {path}"),
    (["PermissionError", "builtins.PermissionError"], "permission denied: {path}"),
    (_types("RateLimited"), "rate limit exceeded for key {hex}: {num} requests per minute"),
    (_types("SessionExpired"), "session {hex} expired at {ts}"),
    (_types("JobFailed"), "job {uuid} failed after {num} retries"),
    (_types("JobFailed"), "job {uuid} cancelled after {num} retries"),
    (["OOMKilled"], "pod {pod} OOMKilled (limit {num}Mi)"),
    (_types("DiskFull"), "disk usage {pct}% on {path} above threshold"),
    (_types("UpstreamError"), "upstream {host} returned 502 Bad Gateway"),
    (_types("UpstreamError"), "upstream {host} returned 503 Service Unavailable"),
    (_types("PaymentDeclined"), "card ending {last4} declined: insufficient funds"),
    (_types("PaymentDeclined"), "card ending {last4} declined: expired card"),
    (_types("CacheMiss"), "cache miss for key cart:{num}"),
    (_types("LockTimeout"), "could not obtain lock on row {num} in table orders"),
    (_types("LockTimeout"), "could not obtain lock on row {num} in table payments"),
    (_types("QuotaExceeded"), "tenant {tenant} exceeded storage quota of {num} GB"),
    (_types("LoginFailed"), "login failed for user {email} from {ip}"),
    (_types("ParseError"), "unexpected token {quoted} at line {num} column {num}"),
    (_types("DNSError"), "could not resolve host {host}"),
    (["NullPointerException", "java.lang.NullPointerException"],
     'Cannot invoke "String.length()" because "{local}" is null'),
    (["ValueError", "builtins.ValueError"], "invalid literal for int() with base 10: {quoted}"),
    (["DeadlockDetected", "psycopg.errors.DeadlockDetected"], "deadlock detected while updating orders of {email}"),
    (_types("VersionRejected"), "client version {ver} is not supported since {ts}"),
    # hard on purpose. Merged by design: a constant in quotes, a status code as a number
    (["IntegrityError", "sqlalchemy.exc.IntegrityError"],
     'duplicate key value violates unique constraint "payments_pkey": Key (id)=({num}) already exists'),
    (_types("HTTPClientError"), "request to payments failed with status 404"),
    (_types("HTTPClientError"), "request to payments failed with status 500"),
    # split: no keyword announces the name; a constant-prefix bucket; a KeyError that is only its key
    (_types("AccessDenied"), "{name} does not have access to billing"),
    (_types("UploadFailed"), "upload to bucket {bucket} failed: AccessDenied"),
    (["KeyError", "builtins.KeyError"], "'user_id'"),
    (["KeyError", "builtins.KeyError"], "'cart_id'"),
]


def generate(n: int, seed: int) -> list[tuple[int, str, str]]:
    """n (kind, error_type, message), kinds Zipf-distributed (s = 1)."""
    r = random.Random(seed)
    order = list(range(len(KINDS)))
    r.shuffle(order)
    weights = [1 / (rank + 1) for rank in range(len(KINDS))]
    out = []
    for kind in r.choices(order, weights=weights, k=n):
        types, template = KINDS[kind]
        msg = template
        while "{" in msg and "}" in msg:
            i = msg.index("{")
            j = msg.index("}", i)
            key = msg[i + 1:j]
            if key not in V:
                break
            msg = msg[:i] + V[key](r) + msg[j + 1:]
        out.append((kind, r.choice(types), msg))
    return out


class OldMiner:
    """Flowscope's miner before this change (Drain-like, after He et al., ICWS 2017), as it was."""

    def __init__(self, similarity: float = 0.5, max_groups: int = 200):
        self.similarity, self.max_groups, self.buckets = similarity, max_groups, {}

    def add(self, error_type: str, message: str) -> str:
        tokens = legacy_mask(message).split(" ") if message else []
        bucket = self.buckets.setdefault((error_type, len(tokens), tokens[0] if tokens else ""), [])
        best, best_score = None, -1.0
        for g in bucket:
            same = sum(1 for a, b in zip(g[1], tokens, strict=False) if a == b or a == "<*>")
            score = same / len(tokens) if tokens else 1.0
            if score > best_score:
                best, best_score = g, score
        if best is not None and (best_score >= self.similarity or len(bucket) >= self.max_groups):
            best[1] = [a if a == b else "<*>" for a, b in zip(best[1], tokens, strict=False)]
            return best[0]
        fp = hashlib.sha1(f"{error_type}\x00{' '.join(tokens)}".encode()).hexdigest()[:16]
        bucket.append([fp, tokens])
        return fp


def score(kinds: list[int], groups: list[str]) -> dict:
    by_group: dict[str, Counter] = defaultdict(Counter)
    by_kind: dict[int, Counter] = defaultdict(Counter)
    for k, g in zip(kinds, groups, strict=True):
        by_group[g][k] += 1
        by_kind[k][g] += 1
    n = len(kinds)
    majority = {g: c.most_common(1)[0][0] for g, c in by_group.items()}
    merged = {k for g, c in by_group.items() if len(c) > 1 for k in c}
    return {"purity": sum(c.most_common(1)[0][1] for c in by_group.values()) / n,
            "inverse_purity": sum(c.most_common(1)[0][1] for c in by_kind.values()) / n,
            "groups": len(by_group), "kinds": len(by_kind), "merged_kinds": sorted(merged),
            "split": {k: len(c) for k, c in by_kind.items() if len(c) > 1},
            "majority": majority, "by_group": by_group}


def store_write(runs: int, seed: int) -> None:
    """Time the run store's error path: ``runs`` failed runs of three nested failing spans each (an
    exception raised through two callers), written in batches as the recorder writes them, SQLite."""
    import tempfile

    from exporter.db import make_engine
    from exporter.model import Span
    from exporter.runstore import RunStore

    data = generate(runs, seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(make_engine(f"sqlite:///{tmp}/bench.db"))
        now = time.time_ns()
        items = []
        for i, (_, etype, msg) in enumerate(data):
            cid, t = f"run-{i}", now - (runs - i) * 10**6
            ids = [f"{i:014x}{k:02x}" for k in range(3)]
            items += [Span(trace_id="a" * 32, span_id=ids[0], workflow="checkout", layer="api", component="orders",
                           operation="POST /checkout", start_ns=t - 3000, end_ns=t, status="error", parent_span_id=None,
                           correlation_id=cid, error_type="HTTPError", error_message="upstream returned 502"),
                      Span(trace_id="a" * 32, span_id=ids[1], workflow="checkout", layer="api", component="payments",
                           operation="charge", start_ns=t - 2000, end_ns=t - 10, status="error", parent_span_id=ids[0],
                           correlation_id=cid, error_type=etype, error_message=msg),
                      Span(trace_id="a" * 32, span_id=ids[2], workflow="checkout", layer="external",
                           component="gateway", operation="authorize", start_ns=t - 1000, end_ns=t - 20, status="error",
                           parent_span_id=ids[1], correlation_id=cid, error_type=etype, error_message=msg)]
        t0 = time.perf_counter()
        for k in range(0, len(items), 3000):  # about what one recorder flush holds at this error rate
            store.write(items[k:k + 3000])
        secs = time.perf_counter() - t0
        groups = store.error_groups(0, limit=1000)
        counted = sum(len(g.times) for g in groups)
        store.close()
    print(f"run store: {runs} failed runs, {3 * runs} failing spans written in {secs:.2f} s "
          f"({3 * runs / secs:,.0f} error spans/s); origins counted {counted} (one per run: {counted == runs})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--verbose", action="store_true", help="name the kinds that are split or merged")
    ap.add_argument("--store-runs", type=int, default=5000, help="failed runs for the store timing (0: skip)")
    a = ap.parse_args()
    data = generate(a.n, a.seed)
    kinds = [k for k, _, _ in data]
    print(f"{a.n} errors of {len(KINDS)} kinds (seed {a.seed}), types under up to 4 SDK names")
    t0 = time.perf_counter()
    new = [fingerprint(t, m)[0] for _, t, m in data]
    t_new = time.perf_counter() - t0
    miner = OldMiner()
    t0 = time.perf_counter()
    old = [miner.add(t, m) for _, t, m in data]
    t_old = time.perf_counter() - t0
    print(f"{'grouping':<28} {'purity':>7} {'inv.purity':>10} {'groups':>7} {'kinds':>6} {'groups/kind':>11} "
          f"{'merged kinds':>12} {'split kinds':>11} {'µs/error':>9}")
    for label, groups, secs in (("flowscope (type + template)", new, t_new), ("old miner (Drain-like)", old, t_old)):
        s = score(kinds, groups)
        print(f"{label:<28} {s['purity']:>7.4f} {s['inverse_purity']:>10.4f} {s['groups']:>7} {s['kinds']:>6} "
              f"{s['groups'] / s['kinds']:>11.2f} {len(s['merged_kinds']):>12} {len(s['split']):>11} "
              f"{1e6 * secs / len(data):>9.1f}")
        if a.verbose:
            for k in s["merged_kinds"]:
                print(f"    merged: {KINDS[k][1]!r}")
            for k, n in sorted(s["split"].items(), key=lambda kv: -kv[1]):
                print(f"    split into {n}: {KINDS[k][1]!r}")
    print("target: purity >= 0.95 (issue 11)")
    if a.store_runs:
        store_write(a.store_runs, a.seed)


if __name__ == "__main__":
    main()

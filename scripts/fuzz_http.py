#!/usr/bin/env python3
"""Schemathesis over the OpenAPI document of a running ``flowscope serve``: count the 5xx answers.

Use this for the HTTP half of issue 9's long fuzz run (``scripts/fuzz.py`` fuzzes the
decoders themselves). Every operation in ``/api/v1/openapi.json`` gets a bounded, seeded
number of generated requests, in positive mode (valid by the schema) and negative mode
(violating it); any 5xx answer, or no answer at all, is a finding, recorded with a curl
command that replays it.

    .venv/bin/python scripts/fuzz_http.py --start --examples 200          # starts its own server
    .venv/bin/python scripts/fuzz_http.py --url http://127.0.0.1:9464 --examples 50

``--start`` runs ``flowscope serve`` on a free port of 127.0.0.1 with a fresh SQLite store
in a temporary directory, and stops it afterwards.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_PATH = "/api/v1/openapi.json"  # exporter.conventions.OPENAPI_PATH
MAX_KEPT = 20  # reproducers kept per operation


@dataclass
class OpStats:
    label: str
    sent: int = 0
    by_class: dict[str, int] = field(default_factory=lambda: {"2xx": 0, "3xx": 0, "4xx": 0, "5xx": 0})
    no_answer: int = 0
    findings: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # modes that could generate nothing

    @property
    def s5xx(self) -> int:
        return self.by_class["5xx"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(tmp: Path) -> tuple[subprocess.Popen, str]:
    """``flowscope serve`` on a free local port with its own store; waits until the document answers."""
    port = free_port()
    env = {**os.environ, "FLOWSCOPE_DATABASE_URL": f"sqlite:///{tmp}/flowscope.db"}
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed with the process below
    proc = subprocess.Popen([str(ROOT / ".venv/bin/flowscope"), "serve", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + OPENAPI_PATH, timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("flowscope serve did not come up:\n" + (tmp / "serve.log").read_text()[-3000:])


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def fuzz_operation(op, base_url: str, mode: GenerationMode, examples: int, run_seed: int, timeout: float,
                   stats: OpStats) -> None:

    @seed(run_seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case) -> None:
        stats.sent += 1
        try:
            # sent with requests directly: schemathesis's own transport trips over urllib3-future's pool
            resp = requests.request(**case.as_transport_kwargs(base_url=base_url), timeout=timeout)
        except requests.RequestException as e:
            stats.no_answer += 1
            if len(stats.findings) < MAX_KEPT:
                stats.findings.append({"mode": mode.value, "status": None, "error": f"{type(e).__name__}: {e}"[:300],
                                       "curl": case.as_curl_command(headers=None)[:4000]})
            return
        cls = f"{resp.status_code // 100}xx"
        stats.by_class[cls] = stats.by_class.get(cls, 0) + 1
        if resp.status_code >= 500 and len(stats.findings) < MAX_KEPT:
            stats.findings.append({"mode": mode.value, "status": resp.status_code, "body": resp.text[:500],
                                   "curl": case.as_curl_command(headers=None)[:4000]})

    try:
        run()
    except Unsatisfiable:  # e.g. negative mode for an operation without parameters: nothing to violate
        stats.skipped.append(mode.value)


def table(all_stats: list[OpStats]) -> str:
    head = f"{'operation':<44} {'sent':>6} {'2xx':>6} {'4xx':>6} {'5xx':>5} {'no answer':>9}"
    rows = [head, "-" * len(head)]
    for s in all_stats:
        rows.append(f"{s.label[:44]:<44} {s.sent:>6} {s.by_class['2xx']:>6} {s.by_class['4xx']:>6} {s.s5xx:>5} "
                    f"{s.no_answer:>9}")
    total = OpStats("total")
    for s in all_stats:
        total.sent += s.sent
        total.no_answer += s.no_answer
        for k, v in s.by_class.items():
            total.by_class[k] = total.by_class.get(k, 0) + v
    rows.append("-" * len(head))
    rows.append(f"{'total':<44} {total.sent:>6} {total.by_class['2xx']:>6} {total.by_class['4xx']:>6} "
                f"{total.s5xx:>5} {total.no_answer:>9}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="base URL of a running flowscope serve (e.g. http://127.0.0.1:9464)")
    where.add_argument("--start", action="store_true", help="start flowscope serve on a free local port")
    p.add_argument("--examples", type=int, default=100, help="generated requests per operation and mode")
    p.add_argument("--modes", default="positive,negative", help="schemathesis generation modes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for each answer")
    p.add_argument("--include", default="", help="only operations whose label contains this text")
    p.add_argument("--out", default="/tmp/fuzz_http_findings.json", help="5xx reproducers (curl) as JSON")
    args = p.parse_args(argv)
    host = args.url.rstrip("/") if args.url else None
    if host and not host.startswith(("http://127.", "http://localhost", "http://[::1]")):
        p.error("only a server on this machine (127.0.0.1) may be fuzzed")
    proc = None
    tmp = Path(tempfile.mkdtemp(prefix="flowscope-fuzz-http-"))
    if args.start:
        proc, host = start_server(tmp)
    try:
        schema = schemathesis.openapi.from_url(host + OPENAPI_PATH)
        modes = [GenerationMode(m.strip()) for m in args.modes.split(",") if m.strip()]
        all_stats = []
        t0 = time.perf_counter()
        for result in schema.get_all_operations():
            op = result.ok()
            if args.include and args.include not in op.label:
                continue
            stats = OpStats(op.label)
            for mode in modes:
                fuzz_operation(op, host, mode, args.examples, args.seed, args.timeout, stats)
            all_stats.append(stats)
            print(f"  {op.label}: {stats.sent} sent, {stats.s5xx} 5xx, {stats.no_answer} no answer",
                  file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - t0
    finally:
        if proc is not None:
            stop_server(proc)
    Path(args.out).write_bytes(orjson.dumps({"seed": args.seed, "examples": args.examples, "modes": args.modes,
                                             "operations": [s.__dict__ for s in all_stats]},
                                            option=orjson.OPT_INDENT_2))
    print(table(all_stats))
    print(f"\n{sum(s.sent for s in all_stats)} requests in {elapsed:.0f}s; reproducers: {args.out}")
    if proc is not None:
        print(f"server log: {tmp / 'serve.log'}")
    return 1 if any(s.s5xx or s.no_answer for s in all_stats) else 0


if __name__ == "__main__":
    sys.exit(main())

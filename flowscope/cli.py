"""The ``flowscope`` command. Errors become exit codes here, and only here.

    flowscope serve --demo          # exporter + backend on 127.0.0.1:9464 with synthetic traffic
    flowscope demo --target URL     # send synthetic traffic to a running exporter
    flowscope config                # effective settings; --markdown for the README table
"""

from __future__ import annotations

import argparse
import gc
import io
import logging
import os
import signal
import sys
import threading
from dataclasses import replace

import orjson

from exporter.config import SETTINGS, load_config, markdown_table
from exporter.errors import ConfigError, FlowscopeError

log = logging.getLogger("flowscope")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def _add_settings(p: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    by = {s.name: s for s in SETTINGS}
    for n in names:
        s = by[n]
        p.add_argument("--" + n.replace("_", "-"), dest=n, default=None, metavar=n.split("_")[-1].upper(),
                       help=f"{s.help} [env {s.env}]")


SERVE_SETTINGS = ("host", "port", "role", "service_name", "ingest_token", "max_body_bytes", "workers", "threads",
                  "connection_limit", "idle_timeout_s", "header_timeout_s", "series_limit", "buckets",
                  "trace_timeout_s", "loki_url", "loki_tenant", "loki_username", "loki_encoding", "lease_retry_s",
                  "demo_rate", "log_level")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flowscope", description=(
        "Flowscope: workflow traces in; Prometheus metrics, Loki streams and analyses out."))
    p.add_argument("--config", metavar="FILE", help="YAML file of settings [env FLOWSCOPE_CONFIG]")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the exporter and backend in one process (the embedded default)",
                           description="Serve OTLP/HTTP and native ingest, /metrics and the backend API; with "
                                       "--role, only ingest or only the backend (replicas).")
    serve.add_argument("--demo", action="store_true", help="also generate synthetic multi-layer traffic")
    _add_settings(serve, SERVE_SETTINGS)

    demo = sub.add_parser("demo", help="send synthetic multi-layer traffic to a running exporter",
                          description="POST synthetic workflow runs as native JSON to TARGET/api/v1/spans.")
    demo.add_argument("--target", default="http://127.0.0.1:9464", help="exporter base URL")
    demo.add_argument("--rate", type=float, default=20.0, help="runs per second")
    demo.add_argument("--duration", type=float, default=0, help="seconds to run (0: until interrupted)")
    demo.add_argument("--token", default=None, help="bearer token, if the exporter requires one")
    demo.add_argument("--seed", type=int, default=None, help="random seed, for repeatable traffic")

    rules = sub.add_parser("rules", help="generate and check Prometheus alert rules and Alertmanager routing",
                           description="Alert rules as code, from a versioned spec (apiVersion: flowscope/v1).")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    for name, text in (("build", "write alert_rules/*.yml, their promtool tests and alertmanager.yml from the spec"),
                       ("test", "run promtool check rules, promtool test rules and amtool check-config")):
        rp = rules_sub.add_parser(name, help=text, description=text)
        rp.add_argument("--spec", default="alert_rules/spec/flowscope.yaml", help="the alert spec")
        rp.add_argument("--out", default="alert_rules", help="output directory")
    rules_sub.choices["build"].add_argument("--check", action="store_true",
                                            help="write nothing; exit 1 if the files on disk are stale")

    dash = sub.add_parser("dashboards", help="generate Grafana dashboards as code (and push them)",
                          description="Grafana dashboards written with grafana-foundation-sdk.")
    dash_sub = dash.add_subparsers(dest="dashboards_command", required=True, metavar="ACTION")
    db = dash_sub.add_parser("build", help="write dashboards/*.json", description="Write dashboards/*.json.")
    db.add_argument("--spec", default="alert_rules/spec/flowscope.yaml", help="alert spec (thresholds, SLOs)")
    db.add_argument("--out", default="dashboards", help="output directory")
    db.add_argument("--provisioning-out", default="grafana/provisioning",
                    help="where Grafana's file provisioning (datasources) goes")
    db.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files on disk are stale")
    dp = dash_sub.add_parser("push", help="upsert the folder, datasources and dashboards into Grafana",
                             description="Provision Grafana through its HTTP API; a second run changes nothing.")
    dp.add_argument("--spec", default="alert_rules/spec/flowscope.yaml", help="alert spec (thresholds, SLOs)")
    dp.add_argument("--grafana-url", dest="grafana_url", help="Grafana base URL [env FLOWSCOPE_GRAFANA_URL]")
    dp.add_argument("--token", dest="grafana_token",
                    help="service-account token [env FLOWSCOPE_GRAFANA_TOKEN, preferred: not in the process list]")
    dp.add_argument("--prometheus-url", dest="grafana_prometheus_url",
                    help="Prometheus URL as Grafana reaches it [env FLOWSCOPE_GRAFANA_PROMETHEUS_URL]")
    dp.add_argument("--loki-url", dest="grafana_loki_url", help="Loki URL as Grafana reaches it")
    dp.add_argument("--public-url", dest="public_url", help="this backend's URL for run-page links")

    integ = sub.add_parser("integrations", help="Datadog and New Relic: scrape configs, monitors, SLOs, NRQL "
                           "conditions and dashboards from the same spec (and push them)",
                           description="Generate the Datadog and New Relic side of the alert spec and dashboards.")
    integ_sub = integ.add_subparsers(dest="integrations_command", required=True, metavar="ACTION")
    ib = integ_sub.add_parser("build", help="write integrations/ (datadog/, newrelic/, UNMAPPED.md)",
                              description="Write integrations/ from the alert spec and the panel definitions.")
    ib.add_argument("--spec", default="alert_rules/spec/flowscope.yaml", help="alert spec (thresholds, SLOs)")
    ib.add_argument("--out", default="integrations", help="output directory")
    ib.add_argument("--target", default="http://flowscope:9464",
                    help="Flowscope's base URL as the Datadog Agent and Prometheus reach it (its /metrics)")
    ib.add_argument("--check", action="store_true", help="write nothing; exit 1 if the files on disk are stale")
    ip = integ_sub.add_parser("push", help="create or update the monitors, SLOs, dashboards and NRQL conditions",
                              description="Send them through the vendors' APIs; a second run changes nothing. Keys "
                                          "only from the environment: DD_API_KEY[_FILE], DD_APP_KEY[_FILE], "
                                          "NEW_RELIC_API_KEY[_FILE].")
    ip.add_argument("--spec", default="alert_rules/spec/flowscope.yaml", help="alert spec (thresholds, SLOs)")
    ip.add_argument("--datadog", action="store_true", help="push to Datadog")
    ip.add_argument("--newrelic", action="store_true", help="push to New Relic")
    ip.add_argument("--datadog-url", help="Datadog API base URL (default https://api.$DD_SITE)")
    ip.add_argument("--newrelic-url", help="NerdGraph URL (default https://api.newrelic.com/graphql)")
    ip.add_argument("--newrelic-account-id", type=int, help="New Relic account id [env NEW_RELIC_ACCOUNT_ID]")

    det = sub.add_parser("detect", help="find regressions and improvements in the workflow metrics",
                         description="Change points and recent-window shifts per series, Benjamini-Hochberg across "
                                     "all of them. Series: p95 step latency per workflow/layer/component, error "
                                     "ratio per workflow, cache hit rate (add your own with --query).")
    src = det.add_mutually_exclusive_group(required=True)
    src.add_argument("--prometheus", metavar="URL", help="read series with query_range from this Prometheus")
    src.add_argument("--csv", metavar="FILE",
                     help="read series offline from a CSV: columns time, series, value (optional columns "
                          "higher_is_better, min_effect per series)")
    det.add_argument("--index", action="store_true",
                     help="the CSV has no time column: each series' rows are its points in order")
    det.add_argument("--since", default="7d", help="how far back to look (e.g. 6h, 7d)")
    det.add_argument("--step", default=None, help="query_range step (default: since/1000, at least 15s)")
    det.add_argument("--query", action="append", default=[], metavar="NAME=PROMQL",
                     help="analyse this PromQL too (repeatable); prefix NAME with + when higher is better")
    det.add_argument("--queries", metavar="YAML",
                     help="the series to analyse, replacing the defaults: a list of {name, promql, higher_is_better, "
                          "min_effect}")
    det.add_argument("--q", type=float, default=0.05, help="false discovery rate across all series (default 0.05)")
    det.add_argument("--alpha", type=float, default=0.01,
                     help="significance level of one change, before the FDR (default 0.01)")
    det.add_argument("--min-effect", type=float, default=0.05, dest="min_effect",
                     help="smallest relative change reported, as a ratio (default 0.05 = 5 %%)")
    det.add_argument("--min-segment", type=int, default=5, dest="min_segment",
                     help="points on each side of a change, at least (default 5)")
    det.add_argument("--max-changes", type=int, default=20, dest="max_changes",
                     help="changes per series, at most (default 20)")
    det.add_argument("--season", default="auto",
                     help="seasonal period to remove: auto (default: found per series, tested), none, or a "
                          "duration (1d; with --index, a number of points)")
    det.add_argument("--json", action="store_true", help="print JSON instead of a table")
    det.add_argument("--plot", metavar="PNG", help="write a figure per finding to this file")
    det.add_argument("--verbose", action="store_true", help="list every series not analysed, with its reason")

    rep = sub.add_parser("replay", help="step through one stored run in the terminal (time travel)",
                         description="Step through a run: n(ext), p(rev), j(ump) N, s(tate), d(iff), l(ist), "
                                     "w(atch) PATH, b(reak) EXPR, c(ontinue), q(uit). "
                                     "Commands may also come on stdin, one per line.")
    rep.add_argument("run_id", metavar="CORRELATION_ID", help="the run's correlation_id (or its trace_id)")
    rsrc = rep.add_mutually_exclusive_group()
    rsrc.add_argument("--url", help="read the run from a running backend (e.g. http://127.0.0.1:9464)")
    rsrc.add_argument("--database-url", dest="database_url", help="read the run from this store [env "
                      "FLOWSCOPE_DATABASE_URL]")
    rep.add_argument("--watch", action="append", default=[], metavar="PATH",
                     help="watch a state path (cart.total): its value at every step shown; repeatable")
    rep.add_argument("--break", action="append", default=[], dest="breaks", metavar="EXPR",
                     help="start at the first step where EXPR holds (layer=database, error, duration > 250, "
                          "cart.total > 100, user.id changed; and/or/not); c runs to the next; repeatable")
    rep.add_argument("--from", type=int, default=None, dest="from_step", metavar="N",
                     help="with --break: search the steps after step N (default: from the start)")

    cfg = sub.add_parser("config", help="print the effective settings",
                         description="Print the effective settings (secrets masked) as JSON.")
    cfg.add_argument("--markdown", action="store_true", help="print the table of every FLOWSCOPE_* variable")
    _db_parser(sub)
    _report_parser(sub)
    _endpoints_parser(sub)
    return p


def tune_gc() -> None:
    """Process-wide GC settings for a dedicated exporter process (never done by the SDK in a host app).

    Decoding a 1,000-span OTLP/JSON batch allocates ~30k small containers, so the
    default gen-0 threshold (700) runs the cyclic collector dozens of times per
    request and doubles the decode cost (bench/ingest.py). Spans are acyclic and
    freed by reference counting, so collections can be far rarer; objects alive
    after start-up are frozen out of them.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 50)


def _duration(seconds: float) -> str:
    """3600 → "1 h", 90 → "90 s", 2592000 → "30 d": retention as a person reads it."""
    for unit, n in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= n and seconds % n == 0:
            return f"{seconds / n:g} {unit}"
    return f"{seconds:g} s"


def _on_stop_signals(stop: threading.Event):
    """SIGTERM and SIGINT set ``stop``; returns a function that puts the previous handlers back.

    Off the main thread (``main()`` called from a test's thread) no handler can be installed, and none is.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    return lambda: [signal.signal(sig, handler) for sig, handler in previous.items()]


def _http_service(server, stopped: threading.Event):
    """The HTTP server as a :class:`~exporter.runtime.Service`: its event loop on a ``flowscope-http`` thread.

    Stopping it closes the listening socket and drains the requests already in the application. If
    the loop ends by itself (it failed), ``stopped`` is set so the owner shuts the rest down too.
    """
    from exporter.runtime import Service

    thread = None

    def run():
        try:
            server.serve_forever()
        except Exception:
            log.exception("the HTTP server failed")
        finally:
            stopped.set()

    def start():
        nonlocal thread
        thread = threading.Thread(target=run, name="flowscope-http")
        thread.start()

    def stop(timeout_s: float) -> bool:
        server.shutdown()
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    return Service("http", start, stop)


#: What an HTTP worker process runs (``python -c``): :func:`worker_main` under this module's own name.
WORKER_MAIN = "from flowscope.cli import worker_main; worker_main()"


def worker_main() -> None:
    """An HTTP worker of ``flowscope serve --workers N`` (:mod:`exporter.prefork`): the backend's app on the
    aggregator's exporter."""
    from backend.app import create_app
    from exporter.prefork import serve_worker

    serve_worker(create_app)


def _workers_service(ex, sock, n: int, stopped: threading.Event):
    """N HTTP worker processes on ``sock``, fed by this process as their aggregator (:mod:`exporter.prefork`),
    as a :class:`~exporter.runtime.Service`. Stopping it stops the workers (they finish their requests) first."""
    from exporter.prefork import Aggregator, WorkerPool
    from exporter.runtime import Service

    agg = Aggregator(ex)
    pool = WorkerPool(n, sock, agg, ex.store, main=WORKER_MAIN)

    def start() -> None:
        agg.start()
        try:
            pool.start()
        except RuntimeError as e:
            agg.close()
            sock.close()
            raise FlowscopeError(str(e)) from None

    def stop(timeout_s: float) -> bool:
        sock.close()  # no new connections: the workers' copies are theirs to close
        clean = pool.stop(timeout_s)
        agg.close()
        return clean

    return Service(f"{n} HTTP workers", start, stop)


def _serve(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from backend.app import create_app, services
    from exporter.conventions import ROLE_ALL
    from exporter.db import StoreUnavailable, first_line
    from exporter.demo import DEMO_RULES_DIR, DEMO_SPEC, DemoTraffic, demo_defaults
    from exporter.prefork import auto_workers, listen
    from exporter.redact import MaskUrlFilter, mask_url
    from exporter.runtime import STOP_TIMEOUT_S, Exporter, Lifecycle, Service, open_store
    from exporter.server import ServerLimits, make_server

    # --demo starts from its own defaults (a 1 h run retention); the file, environment and arguments still win.
    cfg = load_config({n: getattr(args, n) for n in SERVE_SETTINGS}, file=args.config,
                      base=demo_defaults() if args.demo else None)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # every log line masks URL passwords (database, Loki)
        handler.addFilter(MaskUrlFilter())
    # waitress warns "Task queue depth is N" on every request that waits for a thread: a log line per
    # request under load. The pool's bound is the point; the queue is visible as request latency.
    logging.getLogger("waitress.queue").setLevel(logging.DEBUG if cfg.log_level == "DEBUG" else logging.ERROR)
    stopped = threading.Event()
    restore = _on_stop_signals(stopped)  # SIGTERM while the store is awaited ends the wait
    try:
        # The store first: an unreachable one is retried (a line per attempt) up to FLOWSCOPE_STORE_CONNECT_TIMEOUT_S;
        # then a one-line error, as for a SQLite path this user cannot write.
        try:
            engine = open_store(cfg, interrupt=stopped)
        except StoreUnavailable:
            if stopped.is_set():
                restore()
                log.info("stopped while waiting for the store")
                return EXIT_OK
            raise
        # Everything this command runs has one owner, started in order (store and workers, detection, demo,
        # HTTP) and stopped in reverse: the server stops taking requests before the queues it feeds are flushed.
        try:
            ex = Exporter(cfg, engine)  # upgrades the store's schema; starts nothing
        except SQLAlchemyError as e:  # the store went away, or refused the schema upgrade
            engine.dispose()
            raise FlowscopeError(f"store {mask_url(cfg.database_url)}: {first_line(e)}") from None
        workers = cfg.workers or auto_workers()
        try:
            app = create_app(ex)
            if workers > 1:  # this process aggregates; the workers serve the socket (exporter.prefork)
                server = listen(cfg.host, cfg.port)
            else:
                server = make_server(cfg.host, cfg.port, app, ServerLimits.from_config(cfg))
        except SQLAlchemyError as e:
            ex.close()
            raise FlowscopeError(f"store {mask_url(cfg.database_url)}: {first_line(e)}") from None
        except OSError as e:
            ex.close()
            why = e.strerror or str(e) or "address unavailable (in use, or not local)"
            raise FlowscopeError(f"cannot listen on {cfg.host}:{cfg.port}: {why}") from None
    except BaseException:
        restore()
        raise
    if workers > 1:
        host, port = server.getsockname()[:2]
        log.info("HTTP server: %d worker processes of %d threads each, header timeout %g s, idle timeout %g s; this "
                 "process aggregates", workers, cfg.threads, cfg.header_timeout_s, cfg.idle_timeout_s)
    else:
        host, port = server.server_address
        log.info("HTTP server: %d threads, at most %d connections, header timeout %g s, idle timeout %g s",
                 cfg.threads, server.connection_limit, cfg.header_timeout_s, cfg.idle_timeout_s)
    duties = ", ".join(ex.leases.leases) or "none"
    log.info("role %s; duties run once across replicas: %s (%s)", cfg.role, duties,
             "this process owns the SQLite store" if ex.leases.exclusive
             else f"PostgreSQL advisory locks, tried every {cfg.lease_retry_s:g} s")
    life = Lifecycle()
    life.add(Service("exporter", ex.start, ex.close))
    for svc in services(app):
        life.add(svc)
    demo = None
    if args.demo:
        from exporter.decode import native

        def deliver(batch: dict) -> None:
            result = native.decode(batch)
            ex.pipeline.ingest(result.spans, "native")

        from exporter.profiles import Profile, parse_folded

        def profile(workflow: str, folded: str, correlation_id: str | None) -> None:
            self_s, stacks = parse_folded(folded, 100.0)
            ex.pipeline.record_profile(Profile(workflow, self_s, correlation_id, stacks, 100.0), "folded")

        demo = DemoTraffic(deliver, rate=cfg.demo_rate, on_start=ex.pipeline.workflow_started,
                           on_end=ex.pipeline.workflow_ended, on_profile=profile)
        life.add(Service("demo traffic", demo.start, lambda timeout_s: demo.stop()))
    life.add(_workers_service(ex, server, workers, stopped) if workers > 1 else _http_service(server, stopped))
    try:
        tune_gc()
        life.start()
        if demo:
            log.info("demo traffic: %g runs/s; runs are kept %s (FLOWSCOPE_RUN_RETENTION_S); the demo's SLOs are "
                     "in %s, its rules in %s/", cfg.demo_rate, _duration(cfg.run_retention_s), DEMO_SPEC,
                     DEMO_RULES_DIR)
        print(f"flowscope serving on http://{host}:{port}  (metrics: http://{host}:{port}/metrics"
              f"{f', role {cfg.role}' if cfg.role != ROLE_ALL else ''}"
              f"{f', demo traffic on, runs kept {_duration(cfg.run_retention_s)}' if demo else ''})", flush=True)
        stopped.wait()
        log.info("stopping")
    finally:
        clean = life.stop(STOP_TIMEOUT_S)
        ex.close(0)  # a no-op once stopped; closes the store if the start failed before the exporter's turn
        restore()
        log.info("stopped" if clean else "stopped; some queues were not flushed in time (counted as dropped)")
    return EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    import requests

    from exporter.demo import DemoTraffic
    from exporter.runtime import Lifecycle, Service

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    session = requests.Session()
    url = args.target.rstrip("/") + "/api/v1/spans"
    headers = {"Content-Type": "application/json"}
    if args.token:
        headers["Authorization"] = f"Bearer {args.token}"

    def deliver(batch: dict) -> None:
        r = session.post(url, data=orjson.dumps(batch), headers=headers, timeout=10)
        if r.status_code >= 300:
            raise FlowscopeError(f"{url} answered HTTP {r.status_code}: {r.text[:200]}")

    def profile(workflow: str, folded: str, correlation_id: str | None) -> None:
        params = {"workflow": workflow, **({"correlation_id": correlation_id} if correlation_id else {})}
        r = session.post(args.target.rstrip("/") + "/api/v1/profiles", params=params,
                         data=folded.encode(), headers={**headers, "Content-Type": "text/plain"}, timeout=10)
        if r.status_code >= 300:
            raise FlowscopeError(f"profile refused: HTTP {r.status_code}: {r.text[:200]}")

    if not args.rate > 0 or not args.duration >= 0:
        raise ConfigError(f"--rate must be above 0 and --duration at least 0, got {args.rate:g} and {args.duration:g}")
    # --duration D at --rate R: D x R runs (at least one), each delivered when it ends; then the command ends.
    total = max(1, round(args.duration * args.rate)) if args.duration else None
    stop = threading.Event()
    demo = DemoTraffic(deliver, rate=args.rate, seed=args.seed, on_profile=profile, total=total, on_done=stop.set)
    life = Lifecycle()
    life.add(Service("demo traffic", demo.start, lambda timeout_s: demo.stop()))
    restore = _on_stop_signals(stop)
    try:
        life.start()
        stop.wait()  # until every run is delivered (with --duration), or SIGTERM / SIGINT
    finally:
        life.stop()
        restore()
        session.close()
    if demo.runs == 0 and demo.failed:
        raise FlowscopeError(f"no run was delivered to {url} ({demo.failed} tried): {demo.last_error}")
    print(f"sent {demo.runs} runs to {url}" + (f", {demo.failed} not delivered ({demo.last_error})"
                                               if demo.failed else ""))
    return EXIT_OK


def _write_or_check(files: dict[str, str], out: str, check: bool) -> int:
    return _write_or_check_all([(files, out)], check)


def _write_or_check_all(targets: list[tuple[dict[str, str], str]], check: bool) -> int:
    """Write each ``(files, out directory)`` (or, with ``check``, name the stale files), then report once."""
    from pathlib import Path
    if check:
        stale = [Path(out) / rel for files, out in targets for rel, text in files.items()
                 if not (Path(out) / rel).exists() or (Path(out) / rel).read_text() != text]
        for path in stale:
            print(f"stale: {path}", file=sys.stderr)
        return EXIT_ERROR if stale else EXIT_OK
    from backend.rules.build import write_all
    changed = [p for files, out in targets for p in write_all(files, out)]
    print("\n".join(f"wrote {p}" for p in changed) or "up to date")
    return EXIT_OK


def _dashboards(args: argparse.Namespace) -> int:
    from backend.dashboards.build import dashboards, provisioning_files, render_all
    from backend.rules.spec import load_spec

    if args.dashboards_command == "build":
        return _write_or_check_all([(render_all(load_spec(args.spec)), args.out),
                                    (provisioning_files(), args.provisioning_out)], args.check)
    from backend.provision import GrafanaProvisioner
    from backend.provision_api import grafana_config

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = ("grafana_url", "grafana_token", "grafana_prometheus_url", "grafana_loki_url", "public_url")
    cfg = load_config({k: getattr(args, k) for k in keys}, file=args.config)
    if not cfg.grafana_url:
        raise ConfigError("--grafana-url (or FLOWSCOPE_GRAFANA_URL) is required")
    report = GrafanaProvisioner(grafana_config(cfg)).provision(dashboards(load_spec(args.spec)))
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def _integrations(args: argparse.Namespace) -> int:
    from backend.integrations.build import render_all
    from backend.rules.spec import load_spec

    if args.integrations_command == "build":
        from urllib.parse import urlsplit

        target = urlsplit(args.target)
        if target.scheme not in ("http", "https") or not target.netloc:
            raise ConfigError(f"--target must be an http(s) URL like http://flowscope:9464, got {args.target!r}")
        return _write_or_check(render_all(args.spec, target=args.target), args.out, args.check)
    from backend.integrations.push import DatadogConfig, DatadogPusher, NewRelicConfig, NewRelicPusher

    if not (args.datadog or args.newrelic):
        raise ConfigError("say where to push: --datadog and/or --newrelic")
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = load_spec(args.spec)
    reports = []
    if args.datadog:
        pusher = DatadogPusher(DatadogConfig.from_env(args.datadog_url))
        try:
            reports.append(pusher.push(spec))
        finally:
            pusher.close()
    if args.newrelic:
        reports.append(NewRelicPusher(NewRelicConfig.from_env(args.newrelic_url, args.newrelic_account_id)).push(spec))
    for r in reports:
        states = [v for k, group in r.items() if isinstance(group, dict) for v in group.values()]
        vendor = "Datadog" if "datadog" in r else "New Relic"
        r["summary"] = (f"{vendor}: up to date, nothing changed" if all(v == "unchanged" for v in states) else
                        f"{vendor}: " + ", ".join(f"{states.count(k)} {k}" for k in ("created", "updated", "unchanged")
                                                  if states.count(k)))
        print(orjson.dumps(r, option=orjson.OPT_INDENT_2).decode())
    return EXIT_OK


def _detect(args: argparse.Namespace) -> int:
    from backend.regression.analyze import DEFAULT_QUERIES, SeriesQuery, Settings, analyze, as_dicts, plot, table
    from backend.regression.sources import PrometheusSource, SourceError, load_queries, parse_duration, read_csv

    if args.index and not args.csv:
        raise ConfigError("--index applies to --csv only")
    try:
        settings = Settings(q=args.q, alpha=args.alpha, min_effect=args.min_effect, min_segment=args.min_segment,
                            max_changes=args.max_changes).check()
    except ValueError as e:
        name, rest = str(e).split(" ", 1)
        raise ConfigError(f"--{name.replace('_', '-')} {rest}") from None
    try:
        if args.csv:
            frame, better, effect = read_csv(args.csv, index=args.index)
            labels, counters, step = {}, set(), None
        else:
            queries = list(load_queries(args.queries) if args.queries else DEFAULT_QUERIES)
            for spec in args.query:
                name, sep, promql = spec.partition("=")
                if not sep or not name or not promql:
                    raise ConfigError(f"--query must be NAME=PROMQL, got {spec!r}")
                queries.append(SeriesQuery(name.lstrip("+"), promql, higher_is_better=name.startswith("+")))
            since = parse_duration(args.since)
            step = parse_duration(args.step) if args.step else max(15, since // 1000)
            frame, better, labels, counters, effect = PrometheusSource(args.prometheus).fetch(tuple(queries), since,
                                                                                              step)
        season = args.season.strip().lower()
        if season == "auto":
            period = None
        elif season in ("none", "0"):
            period = 0
        elif args.index:
            if not season.isdigit():
                raise ConfigError(f"--season with --index is a number of points, auto or none; got {args.season!r}")
            period = int(season)
        else:
            season_s = parse_duration(args.season)
            if step is None:  # CSV: infer the step from the median spacing of the first series
                first = frame[frame["series"] == frame["series"].iloc[0]]["time"].sort_values()
                step = max(1, int(first.diff().dt.total_seconds().median()))
            period = max(2, round(season_s / step))
        settings = replace(settings, period=period)
        findings, skipped = analyze(frame, better, labels=labels, counters=counters, settings=settings,
                                    min_effect=effect)
    except SourceError as e:
        print(f"flowscope: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(orjson.dumps(as_dicts(findings, skipped), option=orjson.OPT_INDENT_2).decode())
    else:
        print(table(findings, skipped, verbose=args.verbose))
    if args.plot:
        plot(frame, findings, args.plot)
    return EXIT_OK


def _rules(args: argparse.Namespace) -> int:
    from backend.rules.build import check_all, render_all

    files = render_all(args.spec)
    if args.rules_command == "build":
        return _write_or_check(files, args.out, args.check)
    failed = 0
    for cmd, rc, output in check_all(args.out):
        print(f"$ {cmd}\n{output}\n")
        failed += rc != 0
    return EXIT_ERROR if failed else EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    from backend.runs.terminal import LocalSource, RemoteSource, Stepper
    from exporter.store import RunStore

    if args.url:
        source = RemoteSource(args.url, args.run_id)
    else:
        from sqlalchemy.exc import OperationalError

        cfg = load_config({"database_url": args.database_url}, file=args.config)
        engine, where = _existing_store(cfg.database_url)
        try:
            store = RunStore(engine)
        except OperationalError as e:
            engine.dispose()
            raise FlowscopeError(f"cannot read the run store at {where} read-only ({e.orig}); a store written "
                                 "by an older release is upgraded by `flowscope serve` or `flowscope db upgrade`"
                                 ) from None
        try:
            source = LocalSource(store, args.run_id)
        finally:
            store.close()
    try:  # every ReplayError here is about the arguments (--watch, --break, --from): a usage error
        stepper = Stepper(source, watches=args.watch, breaks=args.breaks, start_from=args.from_step)
    except FlowscopeError as e:
        print(f"flowscope: {e}", file=sys.stderr)
        return EXIT_USAGE
    stepper.loop()
    return EXIT_OK


def _existing_store(url: str, alternative: str = "--url of a running backend"):
    """(engine, where) on the store at ``url``, never creating one: a SQLite file must exist, and is opened
    read-only. ``replay`` from another directory than the server's would otherwise make an empty
    ``./var/flowscope.db`` and report the run missing."""
    import sqlite3
    from urllib.parse import quote

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from exporter.db import make_engine
    from exporter.redact import mask_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - malformed: make_engine names the problem
        return make_engine(url), mask_url(url)
    if parsed.get_backend_name() != "sqlite":
        return make_engine(url), mask_url(url)
    path = os.path.abspath(parsed.database) if parsed.database and parsed.database != ":memory:" else None
    if path is None or not os.path.isfile(path):
        raise FlowscopeError(
            f"no run store at {path or url}: `flowscope serve` keeps its runs in var/flowscope.db under the "
            "directory it runs in (FLOWSCOPE_DATABASE_URL). Pass --database-url sqlite:////path/to/flowscope.db"
            + (f", or {alternative}" if alternative else ""))
    uri = f"file:{quote(path)}?mode=ro"
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=10,
                                                                        check_same_thread=False))
    return engine, path


def _report_parser(sub) -> None:
    """``flowscope report``: the debugging report over a window, read from the store (:mod:`backend.reports`)."""
    rp = sub.add_parser("report", help="write a debugging report (SLOs, regressions, errors, slow steps, alerts)",
                        description="A self-contained summary of a window, read from the store: SLO and error "
                                    "budget status, regressions, top error groups with attribution and "
                                    "suggestions, slowest steps and their trend, alerts, endpoint gaps; with links "
                                    "to runs, dashboards and log queries.")
    rp.add_argument("--since", default="7d", help="a duration before --until (90m, 24h, 7d) or a time (default 7d)")
    rp.add_argument("--until", default=None, help="end of the window, RFC 3339 or Unix seconds (default: now)")
    rp.add_argument("--workflow", default=None, help="only this workflow")
    rp.add_argument("--format", default="html", choices=("html", "md", "json"), help="output format (default html)")
    rp.add_argument("--out", metavar="FILE", default=None, help="write here instead of stdout")
    rp.add_argument("--spec", default="alert_rules/spec/flowscope.yaml", help="alert spec (its SLOs)")
    rp.add_argument("--database-url", dest="database_url", help="the store [env FLOWSCOPE_DATABASE_URL]")


def _report(args: argparse.Namespace) -> int:
    import time

    from sqlalchemy.exc import OperationalError

    from backend.reports import ReportError, make_report
    from exporter.store import RunStore

    cfg = load_config({"database_url": args.database_url}, file=args.config)
    engine, where = _existing_store(cfg.database_url, alternative="")
    try:
        try:
            store = RunStore(engine)
        except OperationalError as e:
            raise FlowscopeError(f"cannot read the store at {where} ({e.orig}); a store written by an older release "
                                 "is upgraded by `flowscope serve` or `flowscope db upgrade`") from None
        try:
            body, _ = make_report(store, cfg, args.since, args.until, args.workflow, args.format, time.time_ns(),
                                  spec_path=args.spec)
        except ReportError as e:
            print(f"flowscope: --{e.field}: {e.message}", file=sys.stderr)
            return EXIT_USAGE
    finally:
        engine.dispose()
    if args.out:
        with open(args.out, "wb") as f:
            f.write(body)
    else:
        sys.stdout.write(body.decode())
    return EXIT_OK


def _endpoints_parser(sub) -> None:
    """``flowscope endpoints check``: a live API against its OpenAPI document (:mod:`backend.endpoints.check`)."""
    ep = sub.add_parser("endpoints", help="check a live API against its OpenAPI document (schemathesis)",
                        description="The endpoint inventory's command line.")
    ep_sub = ep.add_subparsers(dest="endpoints_command", required=True, metavar="ACTION")
    ck = ep_sub.add_parser("check", help="validate a live API against its OpenAPI document; failures become a run",
                           description="Valid and invalid requests generated from the document (schemathesis), "
                                       "responses checked against it, auth required where it is declared. The "
                                       "result is one run of the workflow endpoint-check, sent to --flowscope. "
                                       "Exit 0: no failure; 1: failures; 2: a document that cannot be parsed.")
    ck.add_argument("--openapi", required=True, metavar="URL|FILE", help="the OpenAPI document (JSON or YAML)")
    ck.add_argument("--base-url", required=True, dest="base_url", help="where the API answers")
    ck.add_argument("--flowscope", metavar="URL", default=None,
                    help="a Flowscope to send the run to (its ingest token: env FLOWSCOPE_INGEST_TOKEN)")
    ck.add_argument("--service", default="api", help="the service name the run is recorded under (default api)")
    ck.add_argument("--examples", type=int, default=20, help="requests generated per operation and mode")
    ck.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="sent with every valid request (credentials); left out of the auth probe")
    ck.add_argument("--timeout", type=float, default=5.0, help="seconds per request")


def _endpoints(args: argparse.Namespace) -> int:
    import time

    from backend.endpoints.check import CheckError, load_document, post_batch, run_batch, run_check
    from exporter.conventions import RUN_PAGE_PATH

    headers = {}
    for h in args.header:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            print(f"flowscope: --header must be 'Name: value', got {h[:80]!r}", file=sys.stderr)
            return EXIT_USAGE
        headers[name.strip()] = value.strip()
    if not 1 <= args.examples <= 10_000:
        print("flowscope: --examples must be between 1 and 10000", file=sys.stderr)
        return EXIT_USAGE
    try:
        doc = load_document(args.openapi, args.timeout)
        result = run_check(doc, args.base_url, examples=args.examples, headers=headers, timeout=args.timeout)
    except CheckError as e:
        print(f"flowscope: --openapi {args.openapi}: {e}", file=sys.stderr)
        return EXIT_USAGE
    for op in result.operations:
        state = "FAIL" if op.failures else "ok"
        skipped = f", {','.join(op.skipped)} skipped" if op.skipped else ""
        print(f"{state:4} {op.method:7} {op.path}  ({op.requests} requests"
              f"{', auth required' if op.auth else ''}{skipped})")
        for f in op.failures:
            first = (f.message.splitlines() or [f.check])[0]  # schemathesis' "Server error" has no message
            print(f"       [{f.mode}] {f.check}: {first[:200]}\n       {f.curl[:300]}")
    failed = sum(1 for op in result.operations if op.failures)
    print(f"{len(result.operations)} operations, {result.requests} requests, {failed} failed")
    if args.flowscope:
        batch = run_batch(result, args.service, time.time_ns(), document=args.openapi)
        try:
            cid = post_batch(batch, args.flowscope, os.environ.get("FLOWSCOPE_INGEST_TOKEN"), args.timeout)
        except CheckError as e:
            print(f"flowscope: {e}", file=sys.stderr)
            return EXIT_ERROR
        print(f"run: {args.flowscope.rstrip('/')}{RUN_PAGE_PATH}/{cid}")
    return EXIT_ERROR if failed else EXIT_OK


def _db_parser(sub) -> None:
    """``flowscope db upgrade|current``: the store's schema revision (:mod:`exporter.store.migrate`)."""
    db = sub.add_parser("db", help="upgrade the store's schema, or show its revision",
                        description="The store's schema, under Alembic migrations shipped with Flowscope. serve "
                                    "upgrades its database at start too (SQLite always; PostgreSQL under an "
                                    "advisory lock, so replicas starting together take turns).")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, text in (("upgrade", "bring the database to this release's schema (a no-op when it is there)"),
                       ("current", "print the database's schema revision and this release's head")):
        p = db_sub.add_parser(name, help=text, description=text)
        p.add_argument("--database-url", dest="database_url", help="the store [env FLOWSCOPE_DATABASE_URL]")
    db_sub.choices["current"].add_argument("--check", action="store_true",
                                           help="exit 1 unless the database is at this release's head")


def _db(args: argparse.Namespace) -> int:
    import os

    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from exporter.db import make_engine, normalize_url
    from exporter.redact import mask_url
    from exporter.store import migrate

    url = load_config({"database_url": args.database_url}, file=args.config).database_url
    try:
        path = make_url(normalize_url(url)).database if url.startswith("sqlite") else None
    except Exception:  # noqa: BLE001 - make_engine below names what is wrong with it
        path = None
    if args.db_command == "current" and path and path != ":memory:" and not os.path.exists(path):
        print(f"flowscope: no database at {path} (nothing to report; `flowscope db upgrade` creates it)",
              file=sys.stderr)
        return EXIT_ERROR
    engine = make_engine(url)
    try:
        if args.db_command == "upgrade":
            before, after = migrate.upgrade(engine)
            was = before.revision or ("none (a store from before migrations)" if before.legacy else "empty")
            print(f"{mask_url(url)}: at {after.revision} (head)" if before.at_head else
                  f"{mask_url(url)}: upgraded from {was} to {after.revision} (head)")
            return EXIT_OK
        st = migrate.status(engine)
        state = ("head" if st.at_head else "a store from before migrations" if st.legacy else "empty"
                 if st.empty else f"behind head {st.head}" if st.known else f"unknown to this release (head {st.head})")
        print(f"{st.revision or 'none'} ({state})")
        return EXIT_ERROR if args.check and not st.at_head else EXIT_OK
    except SQLAlchemyError as e:
        print(f"flowscope: database {mask_url(url)}: {mask_url(str(getattr(e, 'orig', None) or e))}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a reader that left (`flowscope config | head`) shows here, not at exit
    except BrokenPipeError:
        return _stdout_gone()
    return code


def _stdout_gone() -> int:
    """The reader of our output has gone: exit quietly, as Python's documentation advises (the note on
    SIGPIPE in the ``signal`` module): stdout goes to devnull, so the interpreter's last flush cannot fail
    and print a traceback."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):  # stdout is not a file (a test's)
        pass
    return EXIT_ERROR


def _dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "demo":
            return _demo(args)
        if args.command == "rules":
            return _rules(args)
        if args.command == "dashboards":
            return _dashboards(args)
        if args.command == "integrations":
            return _integrations(args)
        if args.command == "detect":
            return _detect(args)
        if args.command == "replay":
            return _replay(args)
        if args.command == "db":
            return _db(args)
        if args.command == "report":
            return _report(args)
        if args.command == "endpoints":
            return _endpoints(args)
        if args.command == "config":
            if args.markdown:
                print(markdown_table())
            else:
                print(orjson.dumps(load_config(file=args.config).public(), option=orjson.OPT_INDENT_2).decode())
            return EXIT_OK
    except ConfigError as e:
        print(f"flowscope: configuration error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FlowscopeError as e:
        print(f"flowscope: {e}", file=sys.stderr)
        return EXIT_ERROR
    except ModuleNotFoundError as e:
        extra = _EXTRA_OF.get((e.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"flowscope: `flowscope {args.command}` needs the {extra} extra ({e.name} is not installed): "
              f"pip install 'flowscope[{extra}]'", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


#: The packages `pip install flowscope` (the SDK alone) leaves out, and the extra that brings each.
_EXTRA_OF = {**dict.fromkeys(("numpy", "scipy", "pandas", "matplotlib"), "analysis"),
             **dict.fromkeys(("flask", "waitress", "sqlalchemy", "alembic", "psycopg", "msgspec", "cramjam",
                              "google", "opentelemetry", "grafana_client", "grafana_foundation_sdk", "werkzeug",
                              "jinja2"), "server"),
             "datadog_api_client": "integrations", "schemathesis": "fuzz", "hypothesis": "fuzz"}


if __name__ == "__main__":
    sys.exit(main())

"""Scheduled detection: Prometheus → analyze → gauges on /metrics, Grafana annotations, stored findings.

One run at a time: a run that is due while the previous one is still going is skipped
(and counted), never started in parallel.

Across replicas sharing a PostgreSQL store, scheduled runs happen on the replica that holds the ``detection``
lease (:mod:`exporter.lease`); the others count each skipped turn as ``outcome="standby"``. Findings are
recorded under a transaction-level advisory lock, so a finding is new in exactly one run whichever replica ran
it (a scheduled run, or one asked for through the API), and only that run annotates it in Grafana.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy import func, select

from exporter import conventions as c
from exporter.lease import Lease, lock_key
from exporter.store.migrate import ensure_schema
from exporter.store.schema import regressions

from .analyze import DEFAULT_QUERIES, Finding, Settings, analyze
from .sources import PrometheusSource, SourceError

log = logging.getLogger("flowscope.regression")

GAUGE_LABELS = ("query", c.L_WORKFLOW, c.L_LAYER, c.L_COMPONENT, c.L_DETECTOR, "direction")


def _key(f: Finding) -> tuple:
    lab = f.labels or {}
    return (lab.get("query", f.series), lab.get(c.L_WORKFLOW, ""), lab.get(c.L_LAYER, ""),
            lab.get(c.L_COMPONENT, ""), f.detector, f.direction)


class RegressionService:
    def __init__(self, engine, store, source: PrometheusSource | None, since_s: int = 7 * 86400, step_s: int = 300,
                 q: float = 0.05, annotate=None, season_s: int = -1, queries=DEFAULT_QUERIES,
                 settings: Settings | None = None, lease: Lease | None = None):
        """``lease``: the ``detection`` lease; scheduled runs happen only while it is held (None: always)."""
        self.engine = engine
        self.lease = lease
        self.queries = tuple(queries)
        # season_s < 0: each series' period is found automatically; 0: no seasonal removal
        period = None if season_s < 0 else max(2, round(season_s / step_s)) if season_s > 0 else 0
        self.settings = replace(settings or Settings(), q=q, period=period)
        self.source = source
        self.since_s, self.step_s, self.q = since_s, step_s, q
        self.annotate = annotate  # callable(finding) -> None, or None when Grafana is not configured
        ensure_schema(engine)
        self._run_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.active = store.gauge(c.REGRESSION_ACTIVE, "1 while the last detection run reports this finding.",
                                  GAUGE_LABELS)
        self.change = store.gauge(c.REGRESSION_RELATIVE_CHANGE,
                                  "Relative change of an active finding (after/before - 1).",
                                  GAUGE_LABELS)
        self.p_value = store.gauge(c.REGRESSION_P_VALUE, "FDR-adjusted p-value of an active finding.", GAUGE_LABELS)
        self.runs = store.counter(c.REGRESSION_RUNS_TOTAL, "Detection runs, by outcome: ok, source_error, "
                                  "skipped_overlap, and standby (a scheduled turn left to the replica holding the "
                                  "detection lease).", ("outcome",))
        self._store = store
        self.last_run: dict | None = None

    def run_once(self, now: float | None = None) -> dict:
        """Detect now. Raises RuntimeError if a run is already going (no overlap)."""
        if self.source is None:
            raise RuntimeError("no Prometheus configured for detection (FLOWSCOPE_DETECT_PROMETHEUS_URL)")
        if not self._run_lock.acquire(blocking=False):
            with self._store.lock:
                self.runs.inc(("skipped_overlap",))
            raise RuntimeError("a detection run is already in progress")
        try:
            started = time.monotonic()
            try:
                fetched = self.source.fetch(self.queries, self.since_s, self.step_s, end=now)
            except SourceError as e:
                with self._store.lock:
                    self.runs.inc(("source_error",))
                raise RuntimeError(str(e)) from None
            findings, skipped = analyze(fetched.frame, fetched.higher_is_better, labels=fetched.labels,
                                        counters=fetched.counters, settings=self.settings,
                                        min_effect=fetched.min_effect)
            new = self._record(findings)
            self._expose(findings)
            for f in new:
                if self.annotate is not None:
                    try:
                        self.annotate(f)
                    except Exception as e:  # noqa: BLE001 Grafana down must not fail detection
                        log.warning("could not annotate %s in Grafana: %s", f.series, e)
            with self._store.lock:
                self.runs.inc(("ok",))
            self.last_run = {"at": datetime.now(UTC).isoformat(), "findings": len(findings),
                             "new": len(new), "not_analysed": len(skipped),
                             "seconds": round(time.monotonic() - started, 3)}
            return self.last_run
        finally:
            self._run_lock.release()

    def _record(self, findings: list[Finding]) -> list[Finding]:
        """Store findings; one already known (same series, detector and direction, change time within
        5 steps: each run's window ends later, so the step grid moves) is updated, not repeated."""
        now = datetime.now(UTC)
        tolerance = 5 * self.step_s
        new = []
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # replicas record one at a time: a finding is new once
                conn.execute(select(func.pg_advisory_xact_lock(lock_key(c.FINDINGS_LOCK))))
            for f in findings:
                t = datetime.fromisoformat(f.time.replace("Z", "+00:00")).timestamp()
                row = None
                for cand in conn.execute(select(regressions.c.id, regressions.c.change_time).where(
                        regressions.c.series == f.series, regressions.c.detector == f.detector,
                        regressions.c.direction == f.direction)):
                    ct = datetime.fromisoformat(cand.change_time.replace("Z", "+00:00")).timestamp()
                    if abs(ct - t) <= tolerance:
                        row = cand
                        break
                if row is None:
                    conn.execute(regressions.insert().values(
                        series=f.series, labels=json.dumps(f.labels, sort_keys=True), change_time=f.time,
                        detector=f.detector, direction=f.direction, before=f.before, after=f.after,
                        relative_change=f.relative_change, p_value=f.p_value, p_adjusted=f.p_adjusted,
                        first_seen=now, last_seen=now, kind=f.kind, rate_per_s=f.rate_per_s))
                    new.append(f)
                else:
                    conn.execute(regressions.update().where(regressions.c.id == row.id).values(
                        last_seen=now, p_adjusted=f.p_adjusted))
        return new

    def _expose(self, findings: list[Finding]) -> None:
        current = {_key(f): f for f in findings}
        with self._store.lock:
            for key in list(self.active.series):
                if key not in current:
                    self.active.set(key, 0)
            for key, f in current.items():
                self.active.set(key, 1)
                self.change.set(key, f.relative_change)
                self.p_value.set(key, f.p_adjusted)

    def list(self, direction: str | None = None, workflow: str | None = None, limit: int = 100) -> list[dict]:
        q = select(regressions).order_by(regressions.c.last_seen.desc(), regressions.c.id.desc()).limit(limit)
        if direction:
            q = q.where(regressions.c.direction == direction)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        out = []
        for r in rows:
            labels = json.loads(r["labels"])
            if workflow and labels.get(c.L_WORKFLOW) != workflow:
                continue
            out.append({k: r[k] for k in ("series", "change_time", "detector", "direction", "before", "after",
                                          "relative_change", "p_value", "p_adjusted")}
                       | {"labels": labels, "first_seen": r["first_seen"].isoformat(),
                          "last_seen": r["last_seen"].isoformat(), "kind": r["kind"] or "step",
                          "rate_per_s": r["rate_per_s"] or 0.0})
        return out

    def start(self, interval_s: float) -> None:
        """Detect every ``interval_s`` on a thread named ``flowscope-detect`` (once); whoever starts it stops it.
        With a :attr:`lease`, a turn runs only if the lease is confirmed held (a ``SELECT 1`` on its connection
        right before the run); otherwise it is counted as ``outcome="standby"``."""
        if self._thread is not None:
            return
        self._stop.clear()

        def loop():
            while not self._stop.wait(interval_s):
                if self.lease is not None and not self.lease.confirm():
                    with self._store.lock:
                        self.runs.inc(("standby",))
                    continue
                try:
                    self.run_once()
                except RuntimeError as e:
                    log.warning("scheduled detection: %s", e)
                except Exception:
                    log.exception("scheduled detection failed")

        self._thread = threading.Thread(target=loop, name="flowscope-detect", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the schedule; wait up to ``timeout_s`` for a run in progress. True if the thread ended."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning("a detection run is still going past the shutdown deadline; leaving it")
            return False
        return True


def grafana_annotator(provisioner):
    """Post one annotation per new finding at its change point, tagged with workflow and detector."""
    def annotate(f: Finding) -> None:
        t_ms = int(datetime.fromisoformat(f.time.replace("Z", "+00:00")).timestamp() * 1000)
        tags = ["flowscope", "regression" if f.direction == "regression" else "improvement", f.detector]
        if (f.labels or {}).get(c.L_WORKFLOW):
            tags.append(f"workflow:{f.labels[c.L_WORKFLOW]}")
        text = (f"{f.direction}: {f.series} {f.relative_change:+.1%} ({f.before:.4g} → {f.after:.4g}), "
                f"p_adj {f.p_adjusted:.1e}")
        provisioner.annotate(t_ms, tags, text)
    return annotate

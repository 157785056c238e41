"""Runs as the API shows them: plain functions of the run store and the config.

The views in :mod:`backend.runs.api` parse the request, call these and serialise what they return::

    got = load_run(store, "c-1")               # 400 for a bad id, 404 for an unknown run
    body = run_json(got, cfg)                  # GET /api/v1/runs/<id>
    rows = list_runs(store, cfg.public_url, workflow="checkout", limit=100)

The store hands back typed rows (:mod:`exporter.store.rows`); the JSON objects are built here, each from its
row's ``_asdict()`` (keys in column order) and what the API adds to it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from exporter import conventions as c
from exporter.config import Config
from exporter.store import RunDetail, RunStore, RunSummary
from exporter.web import HttpError

from ..dashboards.common import LOKI_DS_UID
from ..query import iso_ns
from .replay import critical_path, span_tree, steps_of, summary


def logs_url(cfg: Config, run: RunSummary) -> str:
    """Grafana Explore on the Loki datasource, this run's lines (correlation_id is structured metadata)."""
    expr = f'{{{c.STREAM_LABELS[1]}="{run.workflow}"}} | correlation_id="{run.correlation_id}"'
    start_ms, end_ms = run.start_ns // 1_000_000 - 60_000, run.end_ns // 1_000_000 + 60_000
    panes = {"run": {"datasource": LOKI_DS_UID,
                     "queries": [{"refId": "A", "expr": expr, "datasource": {"type": "loki", "uid": LOKI_DS_UID}}],
                     "range": {"from": str(start_ms), "to": str(end_ms)}}}
    base = (cfg.grafana_url or "http://localhost:3000").rstrip("/")
    return f"{base}/explore?" + urlencode({"schemaVersion": 1, "orgId": 1,
                                           "panes": json.dumps(panes, separators=(",", ":"))})


def check_run_id(run_id: str) -> None:
    """400 ``invalid_id`` unless ``run_id`` could name a run: 1..128 characters, no NUL."""
    if not run_id or len(run_id) > 128 or "\x00" in run_id:
        raise HttpError(400, "invalid_id", "a correlation_id or trace_id of 1..128 characters is expected", "id")


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadedRun:
    """A run as the views use it (:func:`load_run`): the store's :class:`~exporter.store.RunDetail`, and for the
    pure functions of :mod:`.replay` (which take spans as JSON objects) its spans as such, each with
    ``on_critical_path``, its steps (the same objects) and its critical path (span ids, in time order)."""

    detail: RunDetail
    spans: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    critical_path: list[str]

    @property
    def run(self) -> RunSummary:
        return self.detail.run


def load_run(store: RunStore, run_id: str) -> LoadedRun:
    """The run with what every view needs: steps, tree, critical path. 400 for a bad id, 404 if unknown."""
    check_run_id(run_id)
    detail = store.get_run(run_id)
    if detail is None:
        raise HttpError(404, "run_not_found", f"no stored run with correlation_id or trace_id {run_id!r}", "id")
    spans = [s._asdict() for s in detail.spans]
    path = critical_path(spans)
    crit = set(path)
    for s in spans:
        s["on_critical_path"] = s["span_id"] in crit
    return LoadedRun(detail=detail, spans=spans, steps=steps_of(spans), critical_path=path)


def run_json(got: LoadedRun, cfg: Config) -> dict[str, Any]:
    """``GET /api/v1/runs/<id>``: the run, its span tree (without state), steps, critical path, errors,
    profiles, linked runs and links to its page, logs, flame graph and replay."""
    head = got.run
    run = head._asdict()
    cid = head.correlation_id
    run["start"], run["end"] = iso_ns(head.start_ns), iso_ns(head.end_ns)
    public = cfg.public_url.rstrip("/")
    # state snapshots stay out of the tree (up to state_max_bytes each): /replay serves them step by step
    light = [{**{k: v for k, v in s.items() if k != "state"}, "has_state": s["state"] is not None}
             for s in got.spans]
    return {
        "run": run,
        "tree": span_tree(light),
        "steps": [summary(s) for s in got.steps],
        "critical_path": got.critical_path,
        "errors": [e._asdict() for e in got.detail.errors],
        "profiles": got.detail.profiles,
        # runs linked by span links (a queue consumer and its producer), each with its page
        "linked_runs": [{**r._asdict(), "page": f"{public}{c.RUN_PAGE_PATH}/{quote(r.correlation_id)}"}
                        for r in got.detail.linked_runs],
        "links": {"page": f"{public}{c.RUN_PAGE_PATH}/{quote(cid)}", "logs": logs_url(cfg, head),
                  "flamegraph": f"{public}{c.FLAMEGRAPH_PATH}?correlation_id={quote(cid)}",
                  "replay": f"{public}{c.RUNS_PATH}/{quote(cid)}/replay?step=0"},
    }


def list_runs(store: RunStore, public_url: str, **filters: Any) -> list[dict[str, Any]]:
    """``GET /api/v1/runs``: the store's runs matching ``filters`` (:meth:`RunStore.list_runs`), each with
    its start and end in RFC 3339 and its page under ``public_url``."""
    public = public_url.rstrip("/")
    return [{**r._asdict(), "start": iso_ns(r.start_ns), "end": iso_ns(r.end_ns),
             "page": f"{public}{c.RUN_PAGE_PATH}/{quote(r.correlation_id)}"} for r in store.list_runs(**filters)]

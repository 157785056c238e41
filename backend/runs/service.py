"""Runs as the API shows them: plain functions of the run store and the config.

The views in :mod:`backend.runs.api` parse the request, call these and serialise what they return::

    got = load_run(store, "c-1")               # 400 for a bad id, 404 for an unknown run
    body = run_json(got, cfg)                  # GET /api/v1/runs/<id>
    rows = list_runs(store, cfg.public_url, workflow="checkout", limit=100)
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlencode

from exporter import conventions as c
from exporter.config import Config
from exporter.store import RunStore
from exporter.web import HttpError

from ..dashboards.common import LOKI_DS_UID
from ..query import iso_ns
from .replay import critical_path, span_tree, steps_of, summary


def logs_url(cfg: Config, run: dict) -> str:
    """Grafana Explore on the Loki datasource, this run's lines (correlation_id is structured metadata)."""
    expr = f'{{{c.STREAM_LABELS[1]}="{run["workflow"]}"}} | correlation_id="{run["correlation_id"]}"'
    start_ms, end_ms = run["start_ns"] // 1_000_000 - 60_000, run["end_ns"] // 1_000_000 + 60_000
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


def load_run(store: RunStore, run_id: str) -> dict:
    """The run with what every view needs: steps, tree, critical path. 400 for a bad id, 404 if unknown."""
    check_run_id(run_id)
    got = store.get_run(run_id)
    if got is None:
        raise HttpError(404, "run_not_found", f"no stored run with correlation_id or trace_id {run_id!r}", "id")
    got["critical_path"] = path = critical_path(got["spans"])
    crit = set(path)
    for s in got["spans"]:
        s["on_critical_path"] = s["span_id"] in crit
    got["steps"] = steps_of(got["spans"])
    return got


def run_json(got: dict, cfg: Config) -> dict:
    """``GET /api/v1/runs/<id>``: the run, its span tree (without state), steps, critical path, errors,
    profiles, linked runs and links to its page, logs, flame graph and replay."""
    run = dict(got["run"])
    cid = run["correlation_id"]
    run["start"], run["end"] = iso_ns(run["start_ns"]), iso_ns(run["end_ns"])
    public = cfg.public_url.rstrip("/")
    # state snapshots stay out of the tree (up to state_max_bytes each): /replay serves them step by step
    light = [{**{k: v for k, v in s.items() if k != "state"}, "has_state": s["state"] is not None}
             for s in got["spans"]]
    return {
        "run": run,
        "tree": span_tree(light),
        "steps": [summary(s) for s in got["steps"]],
        "critical_path": got["critical_path"],
        "errors": got["errors"],
        "profiles": got["profiles"],
        # runs linked by span links (a queue consumer and its producer), each with its page
        "linked_runs": [{**r, "page": f"{public}{c.RUN_PAGE_PATH}/{quote(r['correlation_id'])}"}
                        for r in got.get("linked_runs") or ()],
        "links": {"page": f"{public}{c.RUN_PAGE_PATH}/{quote(cid)}", "logs": logs_url(cfg, run),
                  "flamegraph": f"{public}{c.FLAMEGRAPH_PATH}?correlation_id={quote(cid)}",
                  "replay": f"{public}{c.RUNS_PATH}/{quote(cid)}/replay?step=0"},
    }


def list_runs(store: RunStore, public_url: str, **filters: Any) -> list[dict]:
    """``GET /api/v1/runs``: the store's runs matching ``filters`` (:meth:`RunStore.list_runs`), each with
    its start and end in RFC 3339 and its page under ``public_url``."""
    rows = store.list_runs(**filters)
    public = public_url.rstrip("/")
    for r in rows:
        r["start"], r["end"] = iso_ns(r["start_ns"]), iso_ns(r["end_ns"])
        r["page"] = f"{public}{c.RUN_PAGE_PATH}/{quote(r['correlation_id'])}"
    return rows

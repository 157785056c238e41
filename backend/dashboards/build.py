"""Render the dashboards to JSON: sorted keys, fixed uids, the same bytes every run.

    files = render_all(spec)        # {"flowscope-overview.json": text, ...}, pure
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from grafana_foundation_sdk.cog.encoder import JSONEncoder

from backend.rules.spec import Spec

from .definitions import ALL


def dashboards(spec: Spec) -> dict[str, dict[str, Any]]:
    """uid → the dashboard model as plain JSON data."""
    out = {}
    for make in ALL:
        model = make(spec).build()
        d = json.loads(JSONEncoder(sort_keys=True).encode(model))
        for p in panels(d):
            for i, t in enumerate(p.get("targets") or []):
                if not t.get("refId"):
                    t["refId"] = chr(ord("A") + i)  # Grafana needs one per query
        out[model.uid] = d
    return out


def render_all(spec: Spec) -> dict[str, str]:
    return {f"{uid}.json": json.dumps(d, sort_keys=True, indent=2) + "\n" for uid, d in sorted(dashboards(spec).items())}


def panels(d: dict) -> Iterator[dict]:
    for p in d.get("panels", []):
        yield p
        yield from p.get("panels", [])


def promql_targets(d: dict) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every Prometheus query in a dashboard."""
    for p in panels(d):
        for t in p.get("targets", []) or []:
            ds = (t.get("datasource") or p.get("datasource") or {}).get("type")
            if ds == "prometheus" and t.get("expr"):
                yield p.get("title", ""), t["expr"]

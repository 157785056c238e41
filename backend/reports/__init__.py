"""Debugging reports (issue 15): SLOs and error budget, regressions, error groups, slowest steps, alerts and the
endpoint inventory's gaps over a window, as self-contained HTML, Markdown or JSON.

``GET /api/v1/reports`` (:mod:`.api`) and ``flowscope report`` both call :func:`make_report`::

    body, mimetype = make_report(store, cfg, since="7d", until=None, workflow=None, fmt="md", now_ns=now)

:mod:`.build` reads the stores into one dict, :mod:`.render` writes it, :mod:`.svg` draws its plots.
"""

from __future__ import annotations

from typing import Any

import orjson

from exporter.config import Config
from exporter.store import RunStore

from ..errors import SpecError
from ..rules.spec import Spec, load_spec
from .build import Links, ReportError, build_report, check_format, check_workflow, parse_window
from .render import render_html, render_markdown

__all__ = ["DEFAULT_SPEC", "MIMETYPES", "ReportError", "make_report", "report_data"]

DEFAULT_SPEC = "alert_rules/spec/flowscope.yaml"
MIMETYPES = {"html": "text/html; charset=utf-8", "md": "text/markdown; charset=utf-8",
             "json": "application/json"}


def _spec(path: str) -> tuple[Spec | None, str | None]:
    try:
        return load_spec(path), None
    except OSError as e:
        return None, f"No alert spec could be read at {path} ({e.strerror or e}): no objective to report on."
    except SpecError as e:
        return None, f"The alert spec is invalid ({e}): no objective to report on."


def report_data(store: RunStore, cfg: Config, since: str | None, until: str | None, workflow: str | None,
                now_ns: int, spec_path: str = DEFAULT_SPEC) -> dict[str, Any]:
    """The report as a dict (``format=json``); :class:`ReportError` naming a bad parameter."""
    window = parse_window(since, until, now_ns)
    workflow = check_workflow(workflow)
    spec, note = _spec(spec_path)
    grafana = cfg.grafana_url or (spec.grafana_url if spec else None) or "http://localhost:3000"
    return build_report(store, spec, Links(cfg.public_url, grafana), window, workflow, spec_note=note,
                        outcome_keys=tuple(cfg.attribution_outcome_keys))


def make_report(store: RunStore, cfg: Config, since: str | None, until: str | None, workflow: str | None,
                fmt: str | None, now_ns: int, spec_path: str = DEFAULT_SPEC) -> tuple[bytes, str]:
    """(body, mimetype) of the report in ``fmt`` (html, md or json); :class:`ReportError` naming a bad parameter."""
    fmt = check_format(fmt)
    data = report_data(store, cfg, since, until, workflow, now_ns, spec_path)
    if fmt == "json":
        body = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    elif fmt == "md":
        body = render_markdown(data).encode()
    else:
        body = render_html(data).encode()
    return body, MIMETYPES[fmt]

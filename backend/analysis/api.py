"""Error groups, resolutions and root-cause attribution over HTTP.

- ``GET /api/v1/errors``: groups that started failures in ``since`` (default the last 24 h), optionally
  for one ``workflow``: count (runs it started a failure in, in the window; ``total_count`` ever),
  first/last seen, trend (new, spiking, steady), status (open, resolved, regressed), layers,
  workflows, sample correlation_ids, ``propagated_to`` (the callers' groups it failed through) and
  suggestions. A group seen only as a caller is listed under its origins, not on its own.
- ``GET /api/v1/errors/<fingerprint>``: one group, its latest occurrences (each with its
  ``cause_fingerprint``), resolution history, ``caused_by`` and ``propagated_to``.
- ``POST /api/v1/errors/<fingerprint>/resolve`` ``{"note": "...", "resolved_by": "..."}``: remember
  what fixed it. When the error comes back and starts a failure again, the group is flagged
  ``regressed`` and this note is the first suggestion.
- ``GET /api/v1/attribution?workflow=W&select=...``: BubbleUp-style ranking of the values (single values,
  numeric ranges, pairs) that set a selection of runs apart from its baseline, with each dimension's value
  distribution in both (:mod:`backend.analysis.attribution` has the method). Parameters:

  - ``select``: ``failed`` (default; error or timeout runs against the rest), ``slow`` (slower than
    ``threshold_ms``, or than the population's ``percentile``, default 90; with ``operation=`` the
    step's duration is compared, its name or ``component/operation``, and runs without it are left out),
    ``window`` (runs that started in ``[from, to)`` against the rest of ``since .. until``), ``error``
    (the runs error group ``fingerprint`` hit; ``workflow`` defaults to the one it hit most), ``filter``
    (runs matching every ``where``). ``by=failed|slow`` is the old spelling of ``select``.
  - ``where=dimension:value`` (repeatable; ``dimension>number``, ``dimension<number`` for numbers): the
    selection of ``filter``, else narrows the population. Dimensions: ``layer``, ``component``,
    ``operation``, ``service``, ``attr.<key>``, ``resource.<key>``, ``metadata.<key>``.
  - ``since``/``until``: the runs read (default the 24 h before ``until``, default now); ``max_runs``
    (default 20,000, at most 200,000): the newest runs of the window read.
  - ``outcome_keys=k1,k2,prefix.*``: the attribute keys never tested as causes (default the
    ``attribution_outcome_keys`` setting; empty: none). ``q`` (0.05), ``top`` (20), ``dimensions`` (20,
    distributions returned), ``max_values`` (50, distinct values above which a text key is an ID),
    ``pairs`` (``true``/``false``).

  A selection that matches no run or every run, an unknown dimension, operation or fingerprint, a bad
  threshold, percentile or time: 400 naming the parameter.
"""

from __future__ import annotations

import math
import re
import time

import orjson
from flask import Blueprint, request

from exporter import conventions as c
from exporter.web import HttpError

from ..admin import require_admin
from ..ext import current_flowscope, run_store
from ..query import check_text, json_response, number_arg, parse_time, read_body
from . import attribution as at
from . import service
from .attribution import Condition, Selection
from .service import bad_query as _bad

MAX_NOTE = 4000
MAX_RESOLVE_BODY = 64 * 1024  # a 4,000-character note, every character \u-escaped, fits with room to spare

bp = Blueprint("errors", __name__)


def _not_found(fingerprint: str) -> HttpError:
    return HttpError(404, "fingerprint_not_found", f"no error group with fingerprint {fingerprint!r}", "fingerprint")


@bp.get(c.ERRORS_PATH)
def list_groups():
    now = time.time_ns()
    a = request.args
    since = parse_time(a["since"], "since") if a.get("since") else now - 86400 * 10**9
    if since >= now:
        raise HttpError(400, "invalid_query", "since must be in the past", "since")
    recent_s = number_arg("recent_s", 3600, 60, 30 * 86400, float)
    limit = number_arg("limit", 100, 1, 1000)
    store = run_store()
    workflow = check_text(a["workflow"], "workflow") if a.get("workflow") else None
    return json_response(service.error_groups(store, since, now, workflow, limit, recent_s))


@bp.get(c.ERRORS_PATH + "/<fingerprint>")
def get_group(fingerprint: str):
    check_text(fingerprint, "fingerprint", 64)
    g = service.error_group(run_store(), fingerprint)
    if g is None:
        raise _not_found(fingerprint)
    return json_response(g)


@bp.post(c.ERRORS_PATH + "/<fingerprint>/resolve")
def resolve(fingerprint: str):
    require_admin(current_flowscope().config, "resolving an error group")
    check_text(fingerprint, "fingerprint", 64)
    try:
        body = orjson.loads(read_body(MAX_RESOLVE_BODY) or b"null")
    except orjson.JSONDecodeError as e:
        raise HttpError(400, "malformed_json", f"body is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise HttpError(400, "invalid_body", 'expected {"note": "...", "resolved_by": "..."}')
    note = body.get("note")
    if not isinstance(note, str) or not note.strip():
        raise HttpError(400, "invalid_body", "note is required: what fixed it", "note")
    if len(note) > MAX_NOTE:
        raise HttpError(400, "invalid_body", f"note is longer than {MAX_NOTE} characters", "note")
    by = body.get("resolved_by")
    if by is not None and (not isinstance(by, str) or len(by) > 200):
        raise HttpError(400, "invalid_body", "resolved_by must be a string of at most 200 characters",
                        "resolved_by")
    g = service.resolve(run_store(), fingerprint, note.strip(), by, time.time_ns())
    if g is None:
        raise _not_found(fingerprint)
    return json_response(g)


@bp.get(c.ATTRIBUTION_PATH)
def attribution():
    return json_response(attribution_query(request.args))


_WHERE = re.compile(r"(?P<dim>[^:<>]{1,300}?)(?P<op>[:<>])(?P<value>.*)", re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:[0-9]{1,30}(?:\.[0-9]{0,30})?|\.[0-9]{1,30})(?:[eE][-+]?[0-9]{1,3})?")
#: Parameters that only mean something for one selection: given with another, they are refused.
_ONLY_FOR = {"threshold_ms": "slow", "percentile": "slow", "operation": "slow", "from": "window", "to": "window",
             "fingerprint": "error"}


def parse_where(raw: str) -> Condition:
    """``dimension:value``, ``dimension>number`` or ``dimension<number`` → a :class:`Condition`; 400 otherwise."""
    check_text(raw, "where", 2000)
    m = _WHERE.fullmatch(raw)
    if m is None or not m["dim"].strip():
        raise _bad("where", f"where must be dimension:value, dimension>number or dimension<number, got {raw[:60]!r}")
    op = "=" if m["op"] == ":" else m["op"]
    value: str | float = m["value"]
    if op != "=":
        if not _NUMBER.fullmatch(m["value"].strip()) or not math.isfinite(float(m["value"])):
            raise _bad("where", f"{m['dim']}{op} needs a number, got {m['value'][:40]!r}")
        value = float(m["value"])
    assert op in at.OPS
    return Condition(m["dim"].strip(), op, value)


def attribution_query(args) -> dict:
    """The attribution API on a query string (``request.args``): parse it, then
    :func:`~backend.analysis.service.attribution_report` reads the store, selects and ranks."""
    cfg = current_flowscope().config
    kind = args.get("select") or args.get("by") or "failed"
    if args.get("select") and args.get("by") and args["select"] != args["by"]:
        raise _bad("by", "by is the old name of select: give one of them")
    if kind not in at.SELECTIONS:
        raise _bad("select" if args.get("select") else "by", f"select must be one of {', '.join(at.SELECTIONS)}, "
                   f"got {kind[:40]!r}")
    for name, owner in _ONLY_FOR.items():
        if args.get(name) and kind != owner:
            raise _bad(name, f"{name} applies to select={owner}, not select={kind}")
    now = time.time_ns()
    until = parse_time(args["until"], "until") if args.get("until") else now
    since = parse_time(args["since"], "since") if args.get("since") else max(0, until - 86400 * 10**9)
    if since >= until:
        raise _bad("since", "since must be before until")
    store = run_store()
    wf = args.get("workflow")
    run_ids = None
    fp = None
    if kind == "error":
        fp = args.get("fingerprint")
        if not fp:
            raise _bad("fingerprint", "select=error needs fingerprint=<error group>")
        check_text(fp, "fingerprint", 64)
        wf, run_ids = service.error_selection(store, fp, since, until, wf)
    if not wf:
        raise _bad("workflow", "workflow is required")
    check_text(wf, "workflow")
    if args.get("operation"):
        check_text(args["operation"], "operation", 1000)
    threshold = number_arg("threshold_ms", None, 0.0, 1e12, float)
    if args.get("percentile") and threshold is not None:
        raise _bad("percentile", "give threshold_ms or percentile, not both")
    percentile = number_arg("percentile", 90.0, 0.0, 100.0, float)
    if not 0 < percentile < 100:
        raise _bad("percentile", f"percentile must be above 0 and below 100, got {percentile}")
    lo = hi = None
    if kind == "window":
        if not args.get("from"):
            raise _bad("from", "select=window needs from= (and optionally to=)")
        lo = parse_time(args["from"], "from")
        hi = parse_time(args["to"], "to") if args.get("to") else until
        if lo >= hi:
            raise _bad("from", "from must be before to")
    where = tuple(parse_where(w) for w in args.getlist("where")[:20]) if hasattr(args, "getlist") else ()
    if "outcome_keys" in args:
        outcome = tuple(k.strip() for k in check_text(args["outcome_keys"], "outcome_keys", 4000).split(",")
                        if k.strip())
    else:
        outcome = tuple(getattr(cfg, "attribution_outcome_keys", c.ATTRIBUTION_OUTCOME_KEYS))
    pairs = (args.get("pairs") or "true").lower()
    if pairs not in ("true", "false", "1", "0"):
        raise _bad("pairs", "pairs must be true or false")
    opts = {"q": number_arg("q", 0.05, 1e-12, 0.5, float), "top": number_arg("top", 20, 1, 200),
            "dimensions": number_arg("dimensions", 20, 0, 500), "max_values_per_key": number_arg("max_values", 50, 2,
                                                                                               10_000),
            "pairs": pairs in ("true", "1")}
    selection = Selection(kind, threshold, percentile, args.get("operation") or None, lo, hi, run_ids, where)
    return service.attribution_report(store, wf, selection, since, until, cfg.public_url, fp,
                                      number_arg("max_runs", 100_000, 10, 1_000_000), outcome,
                                      number_arg("sample", 5000, 100, 100_000), **opts)

"""Root-cause attribution, BubbleUp-style: which values set a selection of runs apart from its baseline (pure).

Use it to answer "what do these runs have in common that the others don't": the failed runs, the slow
ones, the runs of one time window, the runs one error group hit, or any attribute filter.

**Runs and their features.** A run's features are every value its spans show: ``layer``,
``component`` (layer/component), ``operation`` (component/operation), ``service``, every span
attribute (``attr.<key>``), every OTLP resource attribute (``resource.<key>``: a deploy's
``service.version``, a ``cloud.region``, a ``k8s.pod.name``) and the run's metadata
(``metadata.<key>``: the native ``workflows[].metadata``, the SDK's ``workflow(..., metadata=)``).
Outcome attributes (how a span ended, not why: ``error.type``, status codes, ``exception.*``, OTel
status; :data:`exporter.conventions.ATTRIBUTION_OUTCOME_KEYS`, settable) are never candidates: every
failed span carries them. A key with more than ``max_values_per_key`` distinct text values (IDs) is
not a candidate; a numeric key with more than :data:`NUMERIC_MIN_DISTINCT` values is split into
ranges instead (``attr.payload.bytes > 1e+06``).

**Selection and baseline** (:class:`Selection`): ``failed`` (error or timeout) against the rest;
``slow``, slower than ``threshold_ms`` or the population's ``percentile`` (default 90), per run or,
with ``operation``, per step (runs without the step are left out of both sides); ``window``, runs
that started in ``[from_ns, to_ns)`` against the rest of the window read; ``error``, the runs an
error group hit; ``filter``, the runs matching every ``where`` condition. For any other kind,
``where`` narrows the population first.

**Tests.** Each candidate is a 2×2 table (selected/baseline × with/without), tested one-sided with
Fisher's exact test (Fisher 1922; the comparison Honeycomb's BubbleUp draws by eye), computed as a
log p-value (:func:`log_fisher_greater`), so ranks never tie at 0 however large the store. A numeric
key is cut at up to :data:`RANGE_CUTS` quantiles, each cut tested in both directions (``>`` and
``<=``), and every cut counts as a test; the best cut is reported, at the roundest number that splits
the runs the same way. Pairs: the :data:`PAIR_CANDIDATES` strongest single values are crossed
(values of different dimensions), each pair tested like a single value with its p-value multiplied by
(all pairs of tested values ÷ pairs screened), so screening does not buy significance. A pair is
reported only when it explains the selection better than either value alone: its p-value is lower
than both, and each value still matters among the runs with the other (a conditional Fisher test on
the runs with A, and on the runs with B, Bonferroni over the pairs screened). All p-values of the
family (every value, every cut, every pair) are corrected together with Benjamini–Hochberg (1995),
in log space. Findings are ranked by their (pair-adjusted) log p-value, then by lift.

**Distributions.** For each tested dimension, the value counts in the selection and in the baseline
(numeric ones as ten quantile bins), the table BubbleUp draws as bars.

**Bounded reads.** The runs table answers most selections (:func:`preselect`); spans are then read only
for the runs :func:`sample` picks: every selected and every baseline run up to ``per_side`` each, past
that a fixed pseudo-random subset (CRC-32 of the id), as BubbleUp samples. The comparison stays exact
for the runs read. 20,000 runs: ~0.4 s of CPU, read included (``bench/attribution.py``).

    rows = store.attribution_runs("checkout", since, until)
    plan = preselect(rows, Selection("failed"))
    read = sample(rows.run_ids, plan, 5000)
    feats = build(store.attribution_spans(rows, read))
    sel, pop = finish(feats, Selection("failed"), plan, read)
    result = attribute(feats, sel, pop)
    result["findings"][0]  # {"dimension": "resource.service.version", "value": "1.2.4", "log10_p": -41.2, ...}
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, pairwise
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from scipy import special

from exporter import conventions as c
from exporter.store import AttributionRows

MAX_VALUES_PER_KEY = 50
MAX_VALUE_CHARS = 200
#: A numeric key with more distinct values than this is split into ranges rather than tested value by value.
NUMERIC_MIN_DISTINCT = 12
#: Candidate thresholds per numeric key (quantiles of the population), each tested in both directions.
RANGE_CUTS = 32
#: The strongest single values crossed into pairs.
PAIR_CANDIDATES = 24
#: A value must be seen in at least this many selected runs to be a candidate.
MIN_SUPPORT = 2
#: Values shown per dimension in the distributions; the rest is one "(other)" row.
DIST_VALUES = 8
SELECTIONS = ("failed", "slow", "window", "error", "filter")
OPS = ("=", ">", "<")
_BUILTIN = ("layer", "component", "operation", "service")
_LN10 = math.log(10)
#: One JSON scalar of a span's attributes as :func:`build` indexes it: (token, dimension, numeric value or None).
_Item = tuple[int, int, float | None]
_F64 = npt.NDArray[np.float64]


class SelectionError(ValueError):
    """A selection that cannot be compared (matches nothing, everything, or names an unknown dimension);
    ``field`` is the query parameter to blame."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Condition:
    """``dimension op value``: ``attr.db.name = replica-2``, ``attr.payload.bytes > 1e6``."""

    dimension: str
    op: str
    value: str | float


@dataclass(frozen=True, slots=True)
class Selection:
    """Which runs to explain (see the module docstring); ``where`` is the filter's conditions, or narrows the
    population of the other kinds."""

    kind: str = "failed"
    threshold_ms: float | None = None
    percentile: float = 90.0
    operation: str | None = None
    from_ns: int | None = None
    to_ns: int | None = None
    run_ids: frozenset[str] | None = None
    where: tuple[Condition, ...] = ()


def outcome_key(key: str, patterns: tuple[str, ...]) -> bool:
    """Whether an attribute key is an outcome: equal to a pattern, or starting with one ending in ``*``."""
    for p in patterns:
        if p.endswith("*"):
            if key.startswith(p[:-1]):
                return True
        elif key == p:
            return True
    return False


@dataclass(slots=True)
class Features:
    """The runs of :meth:`RunStore.attribution_runs` / ``attribution_spans`` as arrays: which run has which
    value (``inc_run``, ``inc_tok``: unique pairs), each value's dimension and text, and each numeric
    dimension's value per run (the largest of its spans'; NaN when absent)."""

    rows: AttributionRows
    run_ids: list[str]
    failed: np.ndarray
    duration_ms: np.ndarray
    start_ns: np.ndarray
    dims: list[str]
    dim_index: dict[str, int]
    outcome: np.ndarray
    textual: np.ndarray
    token_dim: np.ndarray
    token_value: list[str]
    values: list[dict[str, int]]
    inc_run: np.ndarray
    inc_tok: np.ndarray
    numeric: dict[int, np.ndarray]


def build(rows: AttributionRows, outcome_keys: tuple[str, ...] = c.ATTRIBUTION_OUTCOME_KEYS) -> Features:
    """Index the values of the runs whose spans were read. Each distinct JSON text (a resource's, a span's
    attributes), each distinct (key, value) and each distinct (layer, component, operation, service) is
    handled once; the per-span work is a dictionary look-up."""
    n = len(rows.run_ids)
    dims: list[str] = []
    dim_index: dict[str, int] = {}
    outcome: list[bool] = []
    textual: list[bool] = []
    values: list[dict[str, int]] = []
    token_dim: list[int] = []
    token_value: list[str] = []
    entry_tokens: list[tuple[int, ...]] = []
    entry_ndims: list[tuple[int, ...]] = []
    entry_nvals: list[tuple[float, ...]] = []

    def dim_of(name: str, key: str | None) -> int:
        d = dim_index.get(name)
        if d is None:
            d = dim_index[name] = len(dims)
            dims.append(name)
            outcome.append(key is not None and outcome_key(key, outcome_keys))
            textual.append(key is None)
            values.append({})
        return d

    def token(d: int, v: str) -> int:
        vals = values[d]
        t = vals.get(v)
        if t is None:
            t = vals[v] = len(token_dim)
            token_dim.append(d)
            token_value.append(v)
        return t

    def item(prefix: str, k: str, v: str | float) -> _Item | None:  # v: str, int, bool or float
        """(token, dimension, numeric value or None) of one JSON scalar, None for a non-finite float; its exact
        type decides (a bool is text, not a number)."""
        if type(v) is float and not math.isfinite(v):
            return None
        d = dim_of(prefix + k, k)
        num = float(v) if type(v) is int or type(v) is float else None
        if num is None:
            textual[d] = True
        return token(d, v if type(v) is str else repr(v) if type(v) is float else str(v)), d, num

    item_caches: dict[str, dict[tuple[str, str | float, type], _Item | None]] = {
        c.DIM_ATTR: {}, c.DIM_RESOURCE: {}, c.DIM_METADATA: {}}

    def parse(text: str, prefix: str) -> int:
        try:
            obj = orjson.loads(text)
        except orjson.JSONDecodeError:
            obj = None
        toks: list[int] = []
        nd: list[int] = []
        nv: list[float] = []
        if type(obj) is dict:
            cache = item_caches[prefix]
            for k, v in obj.items():
                t = type(v)
                if t is str:
                    if len(v) > MAX_VALUE_CHARS:
                        continue
                elif t is not int and t is not bool and t is not float:
                    continue
                key = (k, v, t)
                try:
                    e = cache[key]
                except KeyError:
                    e = cache[key] = item(prefix, k, v)
                if e is None:
                    continue
                toks.append(e[0])
                if e[2] is not None:
                    nd.append(e[1])
                    nv.append(e[2])
        entry_tokens.append(tuple(toks))
        entry_ndims.append(tuple(nd))
        entry_nvals.append(tuple(nv))
        return len(entry_tokens) - 1

    d_layer, d_comp, d_op, d_service = (dim_of(name, None) for name in _BUILTIN)
    names: dict[tuple[str, str, str, str], int] = {}
    attr_cache: dict[str, int] = {}
    meta_cache: dict[str, int] = {}
    res_cache: dict[str, int] = {}
    ref_run: list[int] = []
    ref_entry: list[int] = []
    run_append, entry_append = ref_run.append, ref_entry.append
    for i, layer, comp, op, service, attrs in zip(rows.span_run, rows.layer, rows.component, rows.operation,
                                                  rows.service, rows.attributes):
        if layer == "system":  # the run's envelope: its attributes are the run's metadata
            if attrs:
                e = meta_cache.get(attrs)
                if e is None:
                    e = meta_cache[attrs] = parse(attrs, c.DIM_METADATA)
                run_append(i)
                entry_append(e)
            continue
        key = (layer, comp, op, service)
        e = names.get(key)
        if e is None:
            toks = [token(d_layer, layer), token(d_comp, f"{layer}/{comp}"), token(d_op, f"{comp}/{op}")]
            if service:
                toks.append(token(d_service, service))
            entry_tokens.append(tuple(toks))
            entry_ndims.append(())
            entry_nvals.append(())
            e = names[key] = len(entry_tokens) - 1
        run_append(i)
        entry_append(e)
        if attrs:
            e = attr_cache.get(attrs)
            if e is None:
                e = attr_cache[attrs] = parse(attrs, c.DIM_ATTR)
            run_append(i)
            entry_append(e)
    for i, res in zip(rows.resource_run, rows.resource):
        e = res_cache.get(res)
        if e is None:
            e = res_cache[res] = parse(res, c.DIM_RESOURCE)
        run_append(i)
        entry_append(e)

    n_tok = max(1, len(token_dim))
    runs_of = np.asarray(ref_run, dtype=np.int64)
    ents = np.asarray(ref_entry, dtype=np.int64)
    tok_run, (tok_id,) = _expand(runs_of, ents, entry_tokens, (entry_tokens,), (np.int64,))
    codes = _unique_sorted(tok_run * n_tok + tok_id)
    num_run, (nd, nv) = _expand(runs_of, ents, entry_ndims, (entry_ndims, entry_nvals), (np.int64, np.float64))
    numeric: dict[int, np.ndarray] = {}
    if len(nd):
        order = np.argsort(nd, kind="stable")
        nd, nv, nr = nd[order], nv[order], num_run[order]
        bounds = np.flatnonzero(np.diff(nd)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(nd)]):
            arr = np.full(n, -np.inf)
            np.maximum.at(arr, nr[lo:hi], nv[lo:hi])
            arr[arr == -np.inf] = np.nan
            numeric[int(nd[lo])] = arr
    status = np.asarray(rows.status, dtype=object)
    failed = np.zeros(n, bool)
    for st in c.FAILED_STATUSES:
        failed |= status == st
    return Features(
        rows=rows, run_ids=rows.run_ids, failed=failed, duration_ms=np.asarray(rows.duration_ms, np.float64),
        start_ns=np.asarray(rows.start_ns, np.int64), dims=dims, dim_index=dim_index, outcome=np.asarray(outcome, bool),
        textual=np.asarray(textual, bool), token_dim=np.asarray(token_dim, np.int64), token_value=token_value,
        values=values, inc_run=codes // n_tok, inc_tok=codes % n_tok, numeric=numeric)


def _unique_sorted(x: np.ndarray) -> np.ndarray:
    """Sorted distinct values (a sort and a diff: numpy's hash-based unique is ~20× slower on 1M ints)."""
    if not len(x):
        return x
    x = np.sort(x)
    return x[np.concatenate(([True], x[1:] != x[:-1]))]


def _expand(runs_of: np.ndarray, ents: np.ndarray, lens_of: Sequence[tuple[object, ...]],
            columns: tuple[Sequence[tuple[float, ...]], ...], dtypes: tuple[type[np.generic], ...]
            ) -> tuple[np.ndarray, list[np.ndarray]]:
    """(run, items...) for every item of every referenced entry: a CSR gather, no per-span Python loop.
    ``columns`` are parallel lists of per-entry tuples (same lengths as ``lens_of``'s)."""
    lens = np.fromiter((len(t) for t in lens_of), np.int64, len(lens_of))
    total_items = int(lens.sum())
    if not len(ents) or not total_items:
        return np.zeros(0, np.int64), [np.zeros(0, dt) for dt in dtypes]
    indptr = np.concatenate(([0], np.cumsum(lens)))
    ln = lens[ents]
    total = int(ln.sum())
    idx = np.repeat(indptr[ents] - np.cumsum(ln) + ln, ln) + np.arange(total)
    flats = [np.fromiter(chain.from_iterable(col), dt, total_items)[idx] for col, dt in zip(columns, dtypes)]
    return np.repeat(runs_of, ln), flats


# -- selections ------------------------------------------------------------------------------------


def _condition_mask(f: Features, cond: Condition) -> np.ndarray:
    d = f.dim_index.get(cond.dimension)
    if d is None:
        known = ", ".join(sorted(f.dims)[:12])
        raise SelectionError("where", f"no run read has the dimension {cond.dimension!r} (dimensions are layer, "
                                      f"component, operation, service, attr.<key>, resource.<key>, metadata.<key>; "
                                      f"seen: {known}, ...)")
    mask = np.zeros(len(f.run_ids), bool)
    if cond.op == "=":
        t = f.values[d].get(str(cond.value))
        if t is not None:
            mask[f.inc_run[f.inc_tok == t]] = True
        return mask
    arr = f.numeric.get(d)
    if arr is None:
        raise SelectionError("where", f"{cond.dimension} has no numeric values to compare with {cond.op}")
    with np.errstate(invalid="ignore"):
        return arr > float(cond.value) if cond.op == ">" else arr < float(cond.value)


@dataclass(slots=True)
class Plan:
    """A selection as far as the runs table answers it: ``sel`` (None for ``filter``: it needs the spans),
    ``pop`` and the slow threshold; ``field`` names the parameter an empty selection blames."""

    sel: np.ndarray | None
    pop: np.ndarray
    threshold: float | None
    field: str


def preselect(rows: AttributionRows, s: Selection, step_ms: dict[str, float] | None = None) -> Plan:
    """The selection from the runs alone (status, duration, start, the error's runs, the step's durations
    from :meth:`RunStore.attribution_step_ms`); :class:`SelectionError` when it is empty or everything."""
    n = len(rows.run_ids)
    if n == 0:
        raise SelectionError("workflow", "no finished run of this workflow in the window")
    pop = np.ones(n, bool)
    if s.kind == "filter":
        if not s.where:
            raise SelectionError("where", "select=filter needs at least one where=dimension:value")
        return Plan(None, pop, None, "where")
    threshold = None
    if s.kind == "failed":
        status = np.asarray(rows.status, dtype=object)
        sel = np.zeros(n, bool)
        for st in c.FAILED_STATUSES:
            sel |= status == st
        field = "select"
    elif s.kind == "slow":
        dur = np.asarray(rows.duration_ms, np.float64)
        if s.operation:
            got = step_ms or {}
            dur = np.fromiter((got.get(cid, np.nan) for cid in rows.run_ids), np.float64, n)
            pop &= ~np.isnan(dur)
            if not pop.any():
                raise SelectionError("operation", f"no run in the window has a step {s.operation!r}")
        if s.threshold_ms is not None:
            threshold, field = float(s.threshold_ms), "threshold_ms"
        else:
            threshold, field = float(np.percentile(dur[pop], s.percentile)), "percentile"
        with np.errstate(invalid="ignore"):
            sel = dur > threshold
    elif s.kind == "window":
        start = np.asarray(rows.start_ns, np.int64)
        lo = s.from_ns if s.from_ns is not None else np.iinfo(np.int64).min
        hi = s.to_ns if s.to_ns is not None else np.iinfo(np.int64).max
        sel, field = (start >= lo) & (start < hi), "from"
    elif s.kind == "error":
        ids = s.run_ids or frozenset()
        sel, field = np.fromiter((r in ids for r in rows.run_ids), bool, n), "fingerprint"
    else:
        raise SelectionError("select", f"select must be one of {', '.join(SELECTIONS)}, got {s.kind!r}")
    sel &= pop
    _check(s, sel, pop, field)
    return Plan(sel, pop, threshold, field)


def _check(s: Selection, sel: np.ndarray, pop: np.ndarray, field: str) -> None:
    n_sel, n_base = int(sel.sum()), int((pop & ~sel).sum())
    if n_sel == 0:
        raise SelectionError(field, f"the selection ({s.kind}) matches no run of the {int(pop.sum())} compared")
    if n_base == 0:
        raise SelectionError(field, f"the selection ({s.kind}) matches every run compared: no baseline to "
                                    "compare with")


def sample(run_ids: list[str], plan: Plan, per_side: int) -> list[int]:
    """The runs whose spans to read: every selected run and every baseline run, each side capped at
    ``per_side`` by a fixed pseudo-random order (CRC-32 of the id, so the same runs on every request).
    Without a selection yet (``filter``), ``2 × per_side`` of all runs."""
    order = np.argsort(np.fromiter((zlib.crc32(r.encode()) for r in run_ids), np.int64, len(run_ids)),
                       kind="stable")
    if plan.sel is None:
        keep = order[:2 * per_side]
    else:
        in_sel = plan.sel[order]
        in_base = (plan.pop & ~plan.sel)[order]
        keep = np.concatenate([order[in_sel][:per_side], order[in_base][:per_side]])
    return sorted(int(i) for i in keep)


def finish(f: Features, s: Selection, plan: Plan, read: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(selected, population) among the runs read, ``where`` applied; :class:`SelectionError` if empty."""
    mask = np.zeros(len(f.run_ids), bool)
    mask[read] = True
    where = np.ones(len(f.run_ids), bool)
    for cond in s.where:
        where &= _condition_mask(f, cond)
    if plan.sel is None:
        sel, pop = where & mask, mask
    else:
        pop = plan.pop & mask & where
        if s.where and not pop.any():
            raise SelectionError("where", "no run compared matches the where conditions")
        sel = plan.sel & pop
    _check(s, sel, pop, plan.field)
    return sel, pop


def select(f: Features, s: Selection, step_ms: dict[str, float] | None = None
           ) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(selected, population, threshold_ms) when every run's spans were read: :func:`preselect` + :func:`finish`."""
    plan = preselect(f.rows, s, step_ms)
    sel, pop = finish(f, s, plan, list(range(len(f.run_ids))))
    return sel, pop, plan.threshold


# -- statistics ------------------------------------------------------------------------------------

_TAIL_TERMS = 64


def log_fisher_greater(a: npt.ArrayLike, n_with: npt.ArrayLike, n_selected: int, n_total: int) -> np.ndarray:
    """ln P(X >= a) for X ~ Hypergeometric(``n_total`` runs, ``n_selected`` selected, ``n_with`` drawn): the
    one-sided Fisher exact test of "the value is over-represented in the selection", per element.

    The tail is summed exactly in log space, from ``a`` upwards by the pmf's ratio recurrence, in blocks of
    :data:`_TAIL_TERMS` terms until the rest is below e^-35 of the sum (a geometric bound) or the support
    ends, so p-values far below 1e-308 keep their order (scipy's ``hypergeom.logsf`` agrees; it costs
    ~0.2 ms an element).
    """
    a = np.asarray(a, np.float64).copy()
    m = np.asarray(n_with, np.float64)
    if a.size == 0:
        return np.zeros(0)
    big_k, big_n = float(n_selected), float(n_total)
    kmax = np.minimum(m, big_k)

    def lchoose(x: float | _F64, y: _F64) -> _F64:
        return special.gammaln(x + 1) - special.gammaln(y + 1) - special.gammaln(x - y + 1)

    term = lchoose(big_k, a) + lchoose(big_n - big_k, m - a) - lchoose(big_n, m)
    total = term.copy()
    k = a
    active = k < kmax
    steps = np.arange(_TAIL_TERMS)
    for _ in range(int(np.max(kmax - a, initial=0)) // _TAIL_TERMS + 1):  # each pass moves _TAIL_TERMS further
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        kk = k[idx, None] + steps[None, :]
        mm = m[idx, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            lr = np.log(big_k - kk) + np.log(mm - kk) - np.log(kk + 1) - np.log(big_n - big_k - mm + kk + 1)
            terms = term[idx, None] + np.cumsum(lr, axis=1)  # the terms of k+1 .. k+T
        terms[(kk + 1 > kmax[idx, None]) | np.isnan(terms)] = -np.inf
        total[idx] = np.logaddexp(total[idx], _logsumexp_rows(terms))
        term[idx] = terms[:, -1]
        k[idx] = kk[:, -1] + 1
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = np.exp(lr[:, -1])
            rest = terms[:, -1] + np.log(r / (1 - r))
        done = (k[idx] >= kmax[idx]) | ((r < 1) & (rest - total[idx] < -35))
        active[idx[done]] = False
    out: np.ndarray = np.minimum(total, 0.0)
    return out


def _logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """ln Σ exp(x) per row, -inf rows allowed (scipy's logsumexp costs ~0.4 ms a call in array-API checks)."""
    top = x.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out: np.ndarray = np.log(np.exp(x - safe[:, None]).sum(axis=1)) + safe
    return out


def bh_log(logp: np.ndarray, m: int | None = None) -> np.ndarray:
    """Benjamini–Hochberg (1995) adjusted p-values in log space: ln q for each ln p (``m`` tests in all)."""
    k = len(logp)
    if k == 0:
        return np.zeros(0)
    m = max(m or k, k)
    order = np.argsort(logp, kind="stable")
    lq = logp[order] + math.log(m) - np.log(np.arange(1, k + 1))
    lq = np.minimum.accumulate(lq[::-1])[::-1]
    out = np.empty(k)
    out[order] = np.minimum(lq, 0.0)
    return out


def _round_between(lo: float, hi: float) -> float:
    """The number with the fewest significant digits in ``[lo, hi)`` (a threshold people can read)."""
    if not hi > lo:
        return lo
    mag = math.floor(math.log10(max(abs(lo), abs(hi))))
    for digits in range(1, 18):
        step = 10.0 ** (mag - digits + 1)
        cand = float(f"{math.ceil(lo / step) * step:.{digits + 1}g}")  # drop the float noise of the product
        if lo <= cand < hi:
            return cand
    return lo


def _fmt(x: float) -> str:
    return f"{x:g}"


@dataclass(slots=True)
class _Cand:
    """One tested feature: its conditions, its runs (within the population), and its counts."""

    conds: tuple[Condition, ...]
    mask: np.ndarray | None
    a: int
    b: int
    logp: float
    adj: float = 0.0


def attribute(f: Features, sel: np.ndarray, pop: np.ndarray, q: float = 0.05, top: int = 20, samples: int = 3,
              max_values_per_key: int = MAX_VALUES_PER_KEY, dimensions: int = 20, pairs: bool = True,
              exclude: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    """Rank the values over-represented in ``sel`` against ``pop & ~sel`` (see the module docstring);
    dimensions in ``exclude`` (a filter's own) are not candidates."""
    base = pop & ~sel
    n1, n0 = int(sel.sum()), int(base.sum())
    nt = n1 + n0
    in_pop = pop[f.inc_run]
    tok_s = f.inc_tok[sel[f.inc_run]]
    tok_p = f.inc_tok[in_pop]
    n_tok = len(f.token_dim)
    a_tok = np.bincount(tok_s, minlength=n_tok)
    t_tok = np.bincount(tok_p, minlength=n_tok)
    b_tok = t_tok - a_tok
    # distinct values per dimension among the population's runs
    seen = t_tok > 0
    card = np.bincount(f.token_dim[seen], minlength=len(f.dims)) if n_tok else np.zeros(len(f.dims), np.int64)
    numeric_dims = [d for d in f.numeric if not f.outcome[d] and not f.textual[d] and card[d] > NUMERIC_MIN_DISTINCT
                    and f.dims[d] not in exclude]
    ranged = np.zeros(len(f.dims), bool)
    ranged[numeric_dims] = True
    skip = f.outcome.copy()
    for name in exclude:
        if name in f.dim_index:
            skip[f.dim_index[name]] = True
    cat_dim = ~skip & ~ranged & (card <= max_values_per_key)
    with np.errstate(divide="ignore", invalid="ignore"):
        over = a_tok * n0 > b_tok * n1
    cand_tok = np.flatnonzero(cat_dim[f.token_dim] & (a_tok >= MIN_SUPPORT) & over) if n_tok else np.zeros(0, int)
    logp_tok = log_fisher_greater(a_tok[cand_tok], t_tok[cand_tok], n1, nt)

    # numeric ranges: every cut in both directions is a test; the best per dimension is kept
    range_logp: list[np.ndarray] = []
    best_ranges: list[_Cand] = []
    for d in numeric_dims:
        arr = f.numeric[d]
        v_s, v_b = arr[sel], arr[base]
        v_s, v_b = np.sort(v_s[~np.isnan(v_s)]), np.sort(v_b[~np.isnan(v_b)])
        allv = np.concatenate([v_s, v_b])
        if len(allv) < 2 * MIN_SUPPORT:
            continue
        cuts = np.unique(np.quantile(allv, np.linspace(0, 1, RANGE_CUTS + 2)[1:-1], method="lower"))
        le_s = np.searchsorted(v_s, cuts, side="right")
        le_b = np.searchsorted(v_b, cuts, side="right")
        gt_s, gt_b = len(v_s) - le_s, len(v_b) - le_b
        a = np.concatenate([gt_s, le_s])
        b = np.concatenate([gt_b, le_b])
        ok = (a >= MIN_SUPPORT) & (a * n0 > b * n1)
        lp = np.zeros(len(a))
        if ok.any():
            lp[ok] = log_fisher_greater(a[ok], a[ok] + b[ok], n1, nt)
        range_logp.append(lp)
        if not ok.any():
            continue
        j = int(np.argmin(np.where(ok, lp, np.inf)))
        op = ">" if j < len(cuts) else "<="
        cut = float(cuts[j % len(cuts)])
        above = allv[allv > cut]
        if op == ">":  # any threshold in [cut, next value) splits the runs alike: show the roundest
            thr = _round_between(cut, float(above.min())) if len(above) else cut
        else:
            thr = cut if not len(above) else _round_between(cut, float(above.min()))
        with np.errstate(invalid="ignore"):
            mask = (arr > thr) if op == ">" else (arr <= thr)
        best_ranges.append(_Cand((Condition(f.dims[d], op, thr),), mask & pop, int(a[j]), int(b[j]), float(lp[j])))

    singles = [_Cand((Condition(f.dims[f.token_dim[t]], "=", f.token_value[t]),), None, int(a_tok[t]),
                     int(b_tok[t]), float(lp)) for t, lp in zip(cand_tok, logp_tok)]
    tok_of = {id(s): int(t) for s, t in zip(singles, cand_tok)}
    n_single_tests = len(singles) + sum(len(x) for x in range_logp)

    def run_mask(cand: _Cand) -> np.ndarray:
        if cand.mask is None:
            m = np.zeros(len(f.run_ids), bool)
            m[f.inc_run[f.inc_tok == tok_of[id(cand)]]] = True
            cand.mask = m & pop
        return cand.mask

    # pairs among the strongest singles
    pair_cands: list[_Cand] = []
    pair_logp_all = np.zeros(0)
    pool = sorted(singles + best_ranges, key=lambda x: x.logp)[:PAIR_CANDIDATES] if pairs else []
    if len(pool) >= 2:
        x = np.stack([run_mask(p) for p in pool], axis=1)
        # integer products: no BLAS threads (they spin for hundreds of ms on a busy machine), exact counts
        xs = x[sel].astype(np.int32)
        xp = x[pop].astype(np.int32)
        a_pair = (xs.T @ xs).astype(np.int64)
        t_pair = (xp.T @ xp).astype(np.int64)
        ii, jj = np.triu_indices(len(pool), 1)
        same_dim = np.array([pool[i].conds[0].dimension == pool[j].conds[0].dimension for i, j in zip(ii, jj)],
                            bool)
        ii, jj = ii[~same_dim], jj[~same_dim]
        a_ij, t_ij = a_pair[ii, jj], t_pair[ii, jj]
        b_ij = t_ij - a_ij
        ok = (a_ij >= MIN_SUPPORT) & (a_ij * n0 > b_ij * n1)
        lp = np.zeros(len(ii))
        if ok.any():
            lp[ok] = log_fisher_greater(a_ij[ok], t_ij[ok], n1, nt)
        n_screened = max(1, len(ii))
        n_possible = max(n_screened, (n_single_tests * (n_single_tests - 1)) // 2)
        adj = np.minimum(lp + math.log(n_possible / n_screened), 0.0)
        pair_logp_all = adj
        a_i = np.array([p.a for p in pool])
        t_i = np.array([p.a + p.b for p in pool])
        level = math.log(q) - math.log(n_screened)
        for k in np.flatnonzero(ok):
            i, j = int(ii[k]), int(jj[k])
            if not lp[k] < min(pool[i].logp, pool[j].logp):
                continue
            # does B still matter among the runs with A, and A among the runs with B?
            cond = []
            for u in (i, j):
                au, tu = int(a_i[u]), int(t_i[u])
                cond.append(float(log_fisher_greater([a_ij[k]], [t_ij[k]], au, tu)[0]))
            if max(cond) > level:
                continue
            conds = pool[i].conds + pool[j].conds
            pair_cands.append(_Cand(conds, run_mask(pool[i]) & run_mask(pool[j]), int(a_ij[k]), int(b_ij[k]),
                                    float(lp[k]), float(adj[k])))

    # one Benjamini–Hochberg family: every value, every cut, every screened pair
    family = np.concatenate([logp_tok] + range_logp + [pair_logp_all]) if n_single_tests or len(pair_logp_all) \
        else np.zeros(0)
    m_tests = len(family)
    for cand in singles + best_ranges:
        cand.adj = cand.logp
    found = singles + best_ranges + pair_cands
    found.sort(key=lambda x: (x.adj, -(x.a * n0 / (x.b * n1) if x.b else math.inf), _label(x)))

    sorted_family = np.sort(family)
    lq_sorted = bh_log(sorted_family)

    def q_of(adj: float) -> float:
        if not m_tests:
            return 0.0
        rank = int(np.searchsorted(sorted_family, adj, side="right"))
        if rank == 0:
            return min(0.0, adj + math.log(m_tests))
        return float(min(0.0, lq_sorted[rank - 1]))

    findings = []
    for cand in found[:top]:
        lq = q_of(cand.adj)
        share_s, share_b = cand.a / n1, cand.b / n0
        mask = run_mask(cand)
        idx = np.flatnonzero(mask & sel)[:samples]
        findings.append({
            "dimension": " & ".join(x.dimension for x in cand.conds),
            "value": " & ".join(_cond_value(x) for x in cand.conds),
            "kind": "pair" if len(cand.conds) > 1 else "range" if cand.conds[0].op != "=" else "value",
            "conditions": [{"dimension": x.dimension, "op": x.op, "value": x.value} for x in cand.conds],
            "significant": bool(lq < math.log(q)),
            "log10_p": round(cand.adj / _LN10, 3), "p_value": math.exp(cand.adj),
            "log10_q": round(lq / _LN10, 3), "q_value": math.exp(lq),
            "selected_with": cand.a, "baseline_with": cand.b,
            "share_of_selection": round(share_s, 4), "share_of_baseline": round(share_b, 4),
            "lift": round(share_s / share_b, 3) if share_b else None,
            "sample_runs": [f.run_ids[i] for i in idx],
        })
    return {"runs": nt, "selected_runs": n1, "baseline_runs": n0, "q": q, "tests": m_tests,
            "values_tested": len(singles), "ranges_tested": sum(len(x) for x in range_logp),
            "pairs_tested": len(pair_logp_all), "findings": findings,
            "dimensions": _distributions(f, sel, base, a_tok, b_tok, cat_dim, numeric_dims, found, dimensions)}


def _cond_value(x: Condition) -> str:
    return str(x.value) if x.op == "=" else f"{x.op} {_fmt(float(x.value))}"


def _label(x: _Cand) -> str:
    return "|".join(f"{k.dimension}{k.op}{k.value}" for k in x.conds)


def _distributions(f: Features, sel: np.ndarray, base: np.ndarray, a_tok: np.ndarray, b_tok: np.ndarray,
                   cat_dim: np.ndarray, numeric_dims: list[int], found: list[_Cand], limit: int
                   ) -> list[dict[str, Any]]:
    """Per dimension, its values' counts in the selection and the baseline: the dimensions of the findings
    first, in their order, then the other tested dimensions by name."""
    n1, n0 = int(sel.sum()), int(base.sum())
    order: dict[str, None] = {}
    for cand in found:
        for k in cand.conds:
            order.setdefault(k.dimension, None)
    seen = np.bincount(f.token_dim, weights=(a_tok + b_tok), minlength=len(f.dims)) if len(f.token_dim) else \
        np.zeros(len(f.dims))
    tested = [f.dims[d] for d in np.flatnonzero(cat_dim & (seen > 0))]
    for name in sorted(tested) + sorted(f.dims[d] for d in numeric_dims):
        order.setdefault(name, None)
    shown = list(order)[:limit]
    # which runs have any value of each shown dimension: one pass over the incidences
    shown_ids = np.array([f.dim_index[x] for x in shown], np.int64)
    inc_dim = f.token_dim[f.inc_tok] if len(f.inc_tok) else np.zeros(0, np.int64)
    keep = np.isin(inc_dim, shown_ids)
    pos = {d: k for k, d in enumerate(shown_ids.tolist())}
    have_any = np.zeros((len(shown), len(f.run_ids)), bool)
    if keep.any():
        slot = np.searchsorted(np.sort(shown_ids), inc_dim[keep])
        back = np.argsort(shown_ids)[slot]
        have_any[back, f.inc_run[keep]] = True
    tokens_of: dict[int, list[int]] = {}
    for t in np.flatnonzero(np.isin(f.token_dim, shown_ids) & ((a_tok + b_tok) > 0)):
        tokens_of.setdefault(int(f.token_dim[t]), []).append(int(t))
    out = []
    for name in shown:
        d = f.dim_index[name]
        if d in numeric_dims:
            arr = f.numeric[d]
            vs, vb = arr[sel], arr[base]
            allv = np.concatenate([vs[~np.isnan(vs)], vb[~np.isnan(vb)]])
            edges = np.unique(np.quantile(allv, np.linspace(0, 1, 11))) if len(allv) else np.zeros(0)
            rows = []
            for lo, hi in pairwise(edges):
                last = hi == edges[-1]
                ins = (vs >= lo) & ((vs <= hi) if last else (vs < hi))
                inb = (vb >= lo) & ((vb <= hi) if last else (vb < hi))
                rows.append(_dist_row(f"{_fmt(lo)} – {_fmt(hi)}", int(ins.sum()), int(inb.sum()), n1, n0))
            rows.append(_dist_row("(none)", int(np.isnan(vs).sum()), int(np.isnan(vb).sum()), n1, n0))
            out.append({"dimension": name, "kind": "numeric",
                        "values": [r for r in rows if r["selection"] or r["baseline"]]})
            continue
        counts = sorted(((int(a_tok[t]), int(b_tok[t]), f.token_value[t]) for t in tokens_of.get(d, ())),
                        key=lambda r: (-(r[0] / max(n1, 1) + r[1] / max(n0, 1)), r[2]))
        rows = [_dist_row(v, a, b, n1, n0) for a, b, v in counts[:DIST_VALUES]]
        rest = counts[DIST_VALUES:]
        if rest:
            rows.append(_dist_row(f"(other: {len(rest)} values)", sum(r[0] for r in rest), sum(r[1] for r in rest),
                                  n1, n0))
        have = have_any[pos[d]]
        none_s, none_b = int((sel & ~have).sum()), int((base & ~have).sum())
        if none_s or none_b:
            rows.append(_dist_row("(none)", none_s, none_b, n1, n0))
        out.append({"dimension": name, "kind": "categorical", "values": rows})
    return out


def _dist_row(value: str, a: int, b: int, n1: int, n0: int) -> dict[str, Any]:
    return {"value": value, "selection": a, "baseline": b, "share_of_selection": round(a / n1, 4) if n1 else 0.0,
            "share_of_baseline": round(b / n0, 4) if n0 else 0.0}

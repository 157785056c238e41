"""Cardinality-capped counters, gauges and histograms with exemplars.

Why not prometheus_client's metric classes: each child there is a handful of
objects with their own locks, ``labels(...)`` costs microseconds, and
``generate_latest`` needs ~15 s for 100k histogram series, longer than
Prometheus's default scrape timeout. Here a series is one small object keyed by
a tuple of label values, the whole store shares one lock that writers take once
per *batch*, and :mod:`exporter.exposition` renders a snapshot.

Every family has a series cap. A new label set past the cap is recorded under
the all-``__overflow__`` series instead, and counted in
``flowscope_series_overflow_total{metric=...}``.

Use it like::

    store = MetricStore()
    h = store.histogram("x_seconds", "help", ("workflow",))
    with store.lock:
        h.observe(("login",), 0.2, trace_id, span_id, time_s)
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Generic, TypeVar

from . import conventions as c

#: A series' key: its label values, in the order of the family's label names.
LabelValues = tuple[str, ...]
#: One bucket's exemplar: ``(trace_id, span_id, value, timestamp in s rounded to the ms, or None)``.
Exemplar = tuple[str, str | None, float, float | None]


def float_to_go_string(d: float) -> str:
    """Format a float the way Prometheus (Go) and prometheus_client do, for ``le``."""
    d = float(d)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if math.isnan(d):
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


def escape_label_value(v: str) -> str:
    if "\\" in v or '"' in v or "\n" in v:
        v = v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return v


def label_string(names: Sequence[str], values: Sequence[str]) -> str:
    """``a="x",b="y",`` with a trailing comma, or "" for no labels."""
    return "".join(f'{n}="{escape_label_value(v)}",' for n, v in zip(names, values))


class ScalarSeries:
    """One counter or gauge series: its rendered labels (``a="x",`` with a trailing comma) and its value."""

    __slots__ = ("labels", "value")

    def __init__(self, labels: str):
        self.value = 0.0
        self.labels = labels


class HistogramSeries:
    """One histogram series: per-bucket (not cumulative) counts, sum, per-bucket exemplars (None until the first)."""

    __slots__ = ("counts", "exemplars", "labels", "sum")

    def __init__(self, nbuckets: int, labels: str):
        self.counts = [0] * nbuckets
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] | None = None
        self.labels = labels


_S = TypeVar("_S", ScalarSeries, HistogramSeries)


class _Family(Generic[_S]):
    kind = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], limit: int,
                 on_overflow: Callable[[str], None] | None):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.limit = limit
        self._on_overflow = on_overflow
        self._overflow_key = tuple(c.OVERFLOW for _ in self.labelnames)
        self.series: dict[LabelValues, _S] = {}

    def _admit(self, key: LabelValues) -> LabelValues:
        """The key to record under: ``key`` itself, or the overflow key past the cap."""
        if len(self.series) < self.limit or key == self._overflow_key:
            return key
        if self._on_overflow is not None:
            self._on_overflow(self.name)
        return self._overflow_key

    def __len__(self) -> int:
        return len(self.series)


class Counter(_Family[ScalarSeries]):
    """Monotonic counter. ``name`` ends in ``_total`` (OpenMetrics family drops it)."""

    kind = "counter"

    def inc(self, key: LabelValues, amount: float = 1.0) -> None:
        s = self.series.get(key)
        if s is None:
            s = self._create(key)
        if amount < 0:
            raise ValueError("counters only go up")
        s.value += amount

    def _create(self, key: LabelValues) -> ScalarSeries:
        key = self._admit(key)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = ScalarSeries(label_string(self.labelnames, key))
        return s

    def get(self, key: LabelValues) -> float | None:
        s = self.series.get(key)
        return None if s is None else s.value


class Gauge(Counter):
    """A value that goes up and down; optionally read from a function at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], limit: int,
                 on_overflow: Callable[[str], None] | None):
        super().__init__(name, documentation, labelnames, limit, on_overflow)
        self._functions: dict[LabelValues, Callable[[], float]] = {}

    def inc(self, key: LabelValues, amount: float = 1.0) -> None:
        s = self.series.get(key)
        if s is None:
            s = self._create(key)
        s.value += amount

    def dec(self, key: LabelValues, amount: float = 1.0) -> None:
        self.inc(key, -amount)

    def set(self, key: LabelValues, value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self._create(key)
        s.value = float(value)

    def set_function(self, key: LabelValues, fn: Callable[[], float]) -> None:
        """Read this series from ``fn()`` at every scrape (e.g. a queue's length)."""
        self._create(key)
        self._functions[key] = fn

    def refresh(self) -> None:
        for key, fn in self._functions.items():
            try:
                self.series[key].value = float(fn())
            except Exception:  # noqa: BLE001 - a broken callback must not break the scrape
                pass


class Histogram(_Family[HistogramSeries]):
    """Cumulative histogram (rendered cumulative; stored per bucket) with exemplars.

    Each bucket keeps the exemplar of its *newest* span, by timestamp, not of
    the last span observed. Prometheus's exemplar storage keeps one ordered list
    per series (each ``_bucket`` line with its ``le``) and refuses an exemplar
    whose millisecond timestamp is not after the newest it holds (``ts <=
    newest``, unless it is the same exemplar), logging "Error on ingesting
    out-of-order exemplars". Spans arrive out of order (batches from many
    services, OTLP retries), so "last observed wins", as prometheus_client and
    the Go client do, sends timestamps backwards. The rule:

    * a timestamp is kept rounded to the millisecond, as it is rendered and
      as Prometheus stores it, so what is compared is what Prometheus sees;
    * a new exemplar replaces the bucket's only if its millisecond is strictly
      later; an older span, or one of the same millisecond, leaves the newer
      exemplar in place.

    Why not stamp the exemplar ``max(previous, span end)`` instead: the
    exemplar would claim a time its trace did not end at, and a late span would
    get exactly the previous timestamp with other labels, which Prometheus
    still refuses. Keeping the newest span keeps every exemplar a real trace at
    its real time. The cost: a late span is not shown as an exemplar when its
    bucket has a newer one (exemplars are samples), and a span stamped in the
    future by a skewed clock holds its bucket until that time passes.

    An exemplar without a timestamp (Prometheus stamps it with the scrape
    time) only replaces another one without; don't mix the two in one family.
    Exemplars are only rendered in OpenMetrics.

    Example: ``observe(k, 0.2, t1, s1, 100.0)`` then ``observe(k, 0.2, t2, s2,
    99.0)`` leaves bucket ``le="0.25"`` with ``(t1, s1, 0.2, 100.0)``.
    """

    kind = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], limit: int,
                 on_overflow: Callable[[str], None] | None, buckets: Sequence[float]):
        super().__init__(name, documentation, labelnames, limit, on_overflow)
        bounds = sorted(float(b) for b in buckets)
        if not bounds or len(set(bounds)) != len(bounds) or any(math.isnan(b) or b <= 0 for b in bounds):
            raise ValueError(f"{name}: buckets must be distinct positive numbers, got {list(buckets)}")
        if bounds[-1] == math.inf:
            bounds.pop()
        self.bounds = tuple(bounds)
        self.le_strings = tuple(float_to_go_string(b) for b in self.bounds) + ("+Inf",)
        self._n = len(self.bounds) + 1

    def observe(self, key: LabelValues, value: float, trace_id: str | None = None,
                span_id: str | None = None, timestamp: float | None = None) -> None:
        s = self.series.get(key)
        if s is None:
            s = self._create(key)
        i = bisect_left(self.bounds, value)
        s.counts[i] += 1
        s.sum += value
        if trace_id:
            ex = s.exemplars
            if ex is None:
                ex = s.exemplars = [None] * self._n
            old = ex[i]
            if timestamp is None:
                if old is None or old[3] is None:
                    ex[i] = (trace_id, span_id, value, None)
            elif old is not None and old[3] is not None and timestamp < old[3] + 0.0004:
                # Rounds to old's millisecond or earlier, so it would not replace it: skipping the rounding
                # saves the step hot path a third of this call. (0.4 ms is far past a float's error here,
                # about 0.25 us at today's epoch seconds, and short of the 0.5 ms where rounding goes up.)
                pass
            else:
                timestamp = round(timestamp * 1e3) / 1e3  # whole ms: what is rendered, and compared
                if old is None or (old[3] is not None and timestamp > old[3]):
                    ex[i] = (trace_id, span_id, value, timestamp)

    def _create(self, key: LabelValues) -> HistogramSeries:
        key = self._admit(key)
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = HistogramSeries(self._n, label_string(self.labelnames, key))
        return s

    def count(self, key: LabelValues) -> int:
        s = self.series.get(key)
        return 0 if s is None else sum(s.counts)


#: Any family a store holds (a :class:`Gauge` is a :class:`Counter`).
Family = Counter | Histogram
_F = TypeVar("_F", bound=Family)


class MetricStore:
    """The families one exporter serves, in registration order, and the lock writers share.

    Writers take ``store.lock`` once per batch; the renderer takes it only to
    snapshot. ``series_limit`` is the per-family cap unless a family sets its own.
    """

    def __init__(self, series_limit: int = 10_000, buckets: Iterable[float] = c.DEFAULT_BUCKETS):
        self.lock = threading.Lock()
        self.series_limit = int(series_limit)
        self.buckets = tuple(buckets)
        self.families: list[Family] = []
        #: Called with the lock held before every render or read (fold hot-path tallies in).
        self.collect_hooks: list[Callable[[], None]] = []
        self._by_name: dict[str, Family] = {}
        self.overflow = self.counter(c.SERIES_OVERFLOW_TOTAL,
                                     "Label sets recorded as __overflow__ because a metric reached its series cap.",
                                     (c.L_METRIC,))

    def _count_overflow(self, metric: str) -> None:
        self.overflow.inc((metric,))

    def _add(self, fam: _F) -> _F:
        if fam.name in self._by_name:
            raise ValueError(f"metric {fam.name} registered twice")
        self.families.append(fam)
        self._by_name[fam.name] = fam
        return fam

    def counter(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                limit: int | None = None) -> Counter:
        if not name.endswith("_total"):
            raise ValueError(f"counter {name} must end in _total")
        return self._add(Counter(name, documentation, labelnames, limit or self.series_limit,
                                 self._count_overflow if name != c.SERIES_OVERFLOW_TOTAL else None))

    def gauge(self, name: str, documentation: str, labelnames: Sequence[str] = (),
              limit: int | None = None) -> Gauge:
        return self._add(Gauge(name, documentation, labelnames, limit or self.series_limit, self._count_overflow))

    def histogram(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                  limit: int | None = None, buckets: Iterable[float] | None = None) -> Histogram:
        return self._add(Histogram(name, documentation, labelnames, limit or self.series_limit,
                                   self._count_overflow, tuple(self.buckets if buckets is None else buckets)))

    def get(self, name: str) -> Family:
        return self._by_name[name]

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's current value, for tests and health checks.

        Counters and gauges by family name; histograms by ``<name>_count`` or ``<name>_sum``.
        """
        base, suffix = name, ""
        for sfx in ("_count", "_sum"):
            if name.endswith(sfx) and name[: -len(sfx)] in self._by_name:
                base, suffix = name[: -len(sfx)], sfx
        fam = self._by_name.get(base)
        if fam is None:
            return None
        labels = labels or {}
        key = tuple(labels.get(n, "") for n in fam.labelnames)
        with self.lock:
            for hook in self.collect_hooks:
                hook()
            if isinstance(fam, Gauge):
                fam.refresh()
            if isinstance(fam, Histogram):
                h = fam.series.get(key)
                if h is None:
                    return None
                return float(sum(h.counts)) if suffix == "_count" else h.sum
            s = fam.series.get(key)
            return None if s is None else s.value

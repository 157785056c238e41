"""Render a :class:`~exporter.metrics.MetricStore` as Prometheus text or OpenMetrics.

One pure function, :func:`render`, like prometheus_client's ``generate_latest``.
The store is snapshotted under its lock and formatted outside it, so a slow
scrape never stalls ingest for longer than the copy.

The output parses to the same samples prometheus_client would produce for the
same series (``bench/scrape.py`` checks it with prometheus_client's parsers);
``_created`` series are not emitted.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import partial
from itertools import accumulate
from typing import TypeVar

from .metrics import (
    Counter,
    Exemplar,
    Family,
    Gauge,
    Histogram,
    HistogramSeries,
    MetricStore,
    ScalarSeries,
    escape_label_value,
    float_to_go_string,
)

log = logging.getLogger("flowscope.exposition")

_T = TypeVar("_T", ScalarSeries, HistogramSeries)

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def wants_openmetrics(accept: str | None) -> bool:
    """True when a scraper's Accept header asks for OpenMetrics (as Prometheus does)."""
    return accept is not None and "application/openmetrics-text" in accept


def _escape_help(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def _num(v: float) -> str:
    """A sample value as Prometheus writes it; total: NaN and ±Inf come out as ``NaN``/``+Inf``/``-Inf``."""
    if math.isnan(v) or v in (_INF, _NINF):
        return float_to_go_string(v)
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


_INF, _NINF = float("inf"), float("-inf")


def _float(v: float) -> str:
    return repr(v) if v - v == 0 else float_to_go_string(v)  # x - x is 0 only for finite x


def _exemplar(ex: Exemplar) -> str:
    trace_id, span_id, value, ts = ex
    lbl = f'trace_id="{escape_label_value(trace_id)}"'
    if span_id:
        lbl += f',span_id="{escape_label_value(span_id)}"'
    out = f" # {{{lbl}}} {_float(value)}"
    if ts is not None:
        out += f" {ts:.3f}"
    return out


def _histogram_templates(fam: Histogram) -> tuple[str, str]:
    """One ``str.format`` template per family that writes a whole series at once.

    Formatting a series in a single C-level call instead of one f-string per
    bucket line is what keeps 100k series under Prometheus's scrape timeout.
    Arguments: {0} labels with trailing comma, {1} ``{labels}`` or "", {2} sum,
    {3..} cumulative counts, then (second template) one exemplar suffix per bucket.
    """
    n = len(fam.le_strings)
    name = fam.name.replace("{", "{{").replace("}", "}}")
    lines, lines_ex = [], []
    for i, le in enumerate(fam.le_strings):
        head = f'{name}_bucket{{{{{{0}}le="{le}"}}}} {{{3 + i}}}'
        lines.append(head + "\n")
        lines_ex.append(head + f"{{{3 + n + i}}}\n")
    tail = f"{name}_count{{1}} {{{3 + n - 1}}}\n{name}_sum{{1}} {{2}}\n"
    return "".join(lines) + tail, "".join(lines_ex) + tail


CHUNK_SERIES = 500


def render_iter(store: MetricStore, openmetrics: bool = False) -> Iterator[bytes]:
    """Yield the exposition as UTF-8 chunks (Prometheus text 0.0.4, or OpenMetrics 1.0).

    Series are formatted ``CHUNK_SERIES`` at a time under the store's lock, so
    a scrape of 100k series never holds ingest off for more than one chunk and
    never builds one giant string. ``openmetrics=True`` adds exemplars on
    histogram buckets; the ``# EOF`` trailer is left to :func:`finish` so other
    registries can be appended first.
    """
    lock = store.lock
    with lock:
        for hook in store.collect_hooks:
            hook()
        families = list(store.families)
    for fam in families:
        name = fam.name
        is_counter = isinstance(fam, Counter) and not isinstance(fam, Gauge)
        family = name[:-6] if (is_counter and openmetrics) else name
        yield f"# HELP {family} {_escape_help(fam.documentation)}\n# TYPE {family} {fam.kind}\n".encode()
        if isinstance(fam, Histogram):
            plain, with_ex = _histogram_templates(fam)
            with lock:
                histograms = list(fam.series.values())
            fmt = partial(_format, openmetrics=openmetrics, plain=plain, with_ex=with_ex)
            yield from _chunks(lock, fam, histograms, fmt)
        else:
            with lock:
                if isinstance(fam, Gauge):
                    fam.refresh()
                scalars = list(fam.series.values())
            yield from _chunks(lock, fam, scalars, partial(_format_values, name))


def _chunks(lock: AbstractContextManager[object], fam: Family, series: list[_T],
            fmt: Callable[[Sequence[_T]], str]) -> Iterator[bytes]:
    """``series`` formatted by ``fmt``, ``CHUNK_SERIES`` at a time, each chunk under ``lock``."""
    for lo in range(0, len(series), CHUNK_SERIES):
        chunk = series[lo:lo + CHUNK_SERIES]
        with lock:
            try:
                text = fmt(chunk)
            except Exception as e:  # noqa: BLE001 - a value the boundary missed: skip its series, not the scrape
                text = _format_each(fam, chunk, fmt, e)
        yield text.encode("utf-8", "replace")


def _format(chunk: Sequence[HistogramSeries], openmetrics: bool, plain: str, with_ex: str) -> str:
    out: list[str] = []
    append = out.append
    for s in chunk:
        labels = s.labels
        lb = "{" + labels[:-1] + "}" if labels else ""
        ex = s.exemplars
        if ex is not None and openmetrics:
            append(with_ex.format(labels, lb, _float(s.sum), *accumulate(s.counts),
                                  *[_exemplar(e) if e else "" for e in ex]))
        else:
            append(plain.format(labels, lb, _float(s.sum), *accumulate(s.counts)))
    return "".join(out)


def _format_values(name: str, chunk: Sequence[ScalarSeries]) -> str:
    out: list[str] = []
    append = out.append
    for s in chunk:
        if s.labels:
            append(f"{name}{{{s.labels[:-1]}}} {_num(s.value)}\n")
        else:
            append(f"{name} {_num(s.value)}\n")
    return "".join(out)


def _format_each(fam: Family, chunk: Sequence[_T], fmt: Callable[[Sequence[_T]], str], first: Exception) -> str:
    """Format series one at a time, leaving out (and logging) those that cannot be written."""
    out, bad = [], 0
    for s in chunk:
        try:
            out.append(fmt([s]))
        except Exception:  # noqa: BLE001 - the series is left out, counted and logged below
            bad += 1
    log.error("exposition: left out %d series of %s that could not be written (%s: %s)", bad, fam.name,
              type(first).__name__, first)
    return "".join(out)


def render(store: MetricStore, openmetrics: bool = False) -> bytes:
    """The whole exposition as one bytes object (no ``# EOF``); see :func:`render_iter`."""
    return b"".join(render_iter(store, openmetrics))


def finish(openmetrics: bool) -> bytes:
    """The closing bytes of an exposition: OpenMetrics ends with exactly one ``# EOF``."""
    return b"# EOF\n" if openmetrics else b""

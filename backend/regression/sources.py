"""Where series come from: Prometheus ``query_range`` or a CSV file. Each is a config, an error and a reader."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import NamedTuple

import pandas as pd
import requests

from ..errors import BackendError
from .analyze import SeriesQuery

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class SourceError(BackendError):
    """Series could not be read: Prometheus unreachable or refusing, or a bad CSV."""


def parse_duration(v: str) -> int:
    m = _DURATION.match(v.strip())
    if not m:
        raise SourceError(f"expected a duration like 30m, 6h or 7d, got {v!r}")
    return int(m.group(1)) * _SECONDS[m.group(2)]


class Fetched(NamedTuple):
    """Series read for one detection run."""

    frame: pd.DataFrame  # columns time, series, value
    higher_is_better: dict[str, bool]
    labels: dict[str, dict[str, str]]  # series -> its Prometheus labels and the query's name
    counters: set[str]  # series from a query marked counter: a decrease is a reset
    min_effect: dict[str, float]  # series whose query sets its own smallest relative change


@dataclass(frozen=True)
class PrometheusSource:
    url: str
    timeout_s: float = 30.0

    def fetch(self, queries: tuple[SeriesQuery, ...], since_s: int, step_s: int, end: float | None = None) -> Fetched:
        end = end or time.time()
        rows, better, labels, counters, effect = [], {}, {}, set(), {}
        for q in queries:
            params: dict[str, str | float] = {"query": q.promql, "start": end - since_s, "end": end, "step": step_s}
            try:
                r = requests.get(self.url.rstrip("/") + "/api/v1/query_range", timeout=self.timeout_s, params=params)
            except requests.RequestException as e:
                raise SourceError(f"Prometheus at {self.url} is unreachable: {e.__class__.__name__}") from None
            if r.status_code != 200:
                raise SourceError(f"Prometheus refused query {q.name!r}: HTTP {r.status_code} {r.text[:200]}")
            for res in r.json()["data"]["result"]:
                lab = res["metric"]
                name = q.name + " " + ",".join(f"{k}={v}" for k, v in sorted(lab.items()))
                better[name] = q.higher_is_better
                labels[name] = {"query": q.name, **lab}
                if q.counter:
                    counters.add(name)
                if q.min_effect is not None:
                    effect[name] = q.min_effect
                rows += [(float(t), name, float(v)) for t, v in res["values"]]
        frame = pd.DataFrame(rows, columns=["time", "series", "value"])
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return Fetched(frame, better, labels, counters, effect)


def load_queries(path: str) -> tuple[SeriesQuery, ...]:
    """Series to analyse from YAML: a list of {name, promql, higher_is_better?, unit?}; errors name the entry."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except OSError as e:
        raise SourceError(f"{path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise SourceError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(doc, list) or not doc:
        raise SourceError(f"{path}: expected a non-empty list of {{name, promql, higher_is_better}}")
    out = []
    for i, q in enumerate(doc):
        if not isinstance(q, dict):
            raise SourceError(f"{path}: [{i}]: expected a mapping")
        unknown = set(q) - {"name", "promql", "higher_is_better", "unit", "counter", "min_effect"}
        if unknown:
            raise SourceError(f"{path}: [{i}].{min(unknown)}: unknown field")
        for k in ("name", "promql"):
            if not isinstance(q.get(k), str) or not q[k].strip():
                raise SourceError(f"{path}: [{i}].{k}: required, a non-empty string")
        if not isinstance(q.get("higher_is_better", False), bool):
            raise SourceError(f"{path}: [{i}].higher_is_better: must be true or false")
        effect = q.get("min_effect")
        if effect is not None and (isinstance(effect, bool) or not isinstance(effect, (int, float))
                                   or not 0 <= effect < 100):
            raise SourceError(f"{path}: [{i}].min_effect: a ratio between 0 and 100 (0.05 = 5 %)")
        out.append(SeriesQuery(q["name"], q["promql"], bool(q.get("higher_is_better", False)), str(q.get("unit", "")),
                               bool(q.get("counter", False)), None if effect is None else float(effect)))
    return tuple(out)


def read_csv(path: str, index: bool = False) -> tuple[pd.DataFrame, dict[str, bool], dict[str, float]]:
    """(frame, higher_is_better, min_effect) from a CSV with columns time, series, value.

    time is ISO 8601 or epoch seconds; with ``index`` there is no time column and each series'
    rows are its points in order (time becomes the position). Optional columns, read from each
    series' first row: ``higher_is_better`` (true/false, 1/0) and ``min_effect`` (a ratio).
    """
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise SourceError(f"{path}: not a readable CSV: {e}") from None
    need = {"series", "value"} if index else {"time", "series", "value"}
    missing = need - set(frame.columns)
    if missing:
        raise SourceError(f"{path}: missing column(s) {sorted(missing)}; expected {', '.join(sorted(need))}"
                          + ("" if index else " (or --index for a file without a time column)"))
    if index:
        frame["time"] = frame.groupby("series").cumcount()
    else:
        t = frame["time"]
        frame["time"] = pd.to_datetime(t, unit="s", utc=True) if pd.api.types.is_numeric_dtype(t) \
            else pd.to_datetime(t, utc=True, errors="coerce")
        if frame["time"].isna().any():
            bad = int(frame.index[frame["time"].isna()][0]) + 2
            raise SourceError(f"{path}: line {bad}: time is not ISO 8601 or epoch seconds")
    frame["series"] = frame["series"].astype(str)
    firsts = frame.drop_duplicates("series")
    better, effect = {}, {}
    if "higher_is_better" in frame.columns:
        for name, v in zip(firsts["series"], firsts["higher_is_better"]):
            flag = str(v).strip().lower()
            if flag not in ("true", "false", "1", "0", "nan", ""):
                raise SourceError(f"{path}: series {name!r}: higher_is_better must be true or false, got {v!r}")
            better[name] = flag in ("true", "1")
    if "min_effect" in frame.columns:
        for name, v in zip(firsts["series"], pd.to_numeric(firsts["min_effect"], errors="coerce")):
            if pd.isna(v):
                continue
            if not 0 <= v < 100:
                raise SourceError(f"{path}: series {name!r}: min_effect must be a ratio between 0 and 100, got {v}")
            effect[name] = float(v)
    return frame[["time", "series", "value"]], better, effect

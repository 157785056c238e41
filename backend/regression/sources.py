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
    labels: dict[str, dict]
    counters: set[str]  # series from a query marked counter: a decrease is a reset


@dataclass(frozen=True)
class PrometheusSource:
    url: str
    timeout_s: float = 30.0

    def fetch(self, queries: tuple[SeriesQuery, ...], since_s: int, step_s: int, end: float | None = None) -> Fetched:
        end = end or time.time()
        rows, better, labels, counters = [], {}, {}, set()
        for q in queries:
            try:
                r = requests.get(self.url.rstrip("/") + "/api/v1/query_range", timeout=self.timeout_s,
                                 params={"query": q.promql, "start": end - since_s, "end": end, "step": step_s})
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
                rows += [(float(t), name, float(v)) for t, v in res["values"]]
        frame = pd.DataFrame(rows, columns=["time", "series", "value"])
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return Fetched(frame, better, labels, counters)


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
        unknown = set(q) - {"name", "promql", "higher_is_better", "unit", "counter"}
        if unknown:
            raise SourceError(f"{path}: [{i}].{sorted(unknown)[0]}: unknown field")
        for k in ("name", "promql"):
            if not isinstance(q.get(k), str) or not q[k].strip():
                raise SourceError(f"{path}: [{i}].{k}: required, a non-empty string")
        if not isinstance(q.get("higher_is_better", False), bool):
            raise SourceError(f"{path}: [{i}].higher_is_better: must be true or false")
        out.append(SeriesQuery(q["name"], q["promql"], bool(q.get("higher_is_better", False)), str(q.get("unit", "")),
                               bool(q.get("counter", False))))
    return tuple(out)


def read_csv(path: str) -> pd.DataFrame:
    """A CSV with columns time, series, value (time: ISO 8601 or epoch seconds)."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise SourceError(f"{path}: not a readable CSV: {e}") from None
    missing = {"time", "series", "value"} - set(frame.columns)
    if missing:
        raise SourceError(f"{path}: missing column(s) {sorted(missing)}; expected time, series, value")
    t = frame["time"]
    frame["time"] = pd.to_datetime(t, unit="s", utc=True) if pd.api.types.is_numeric_dtype(t) \
        else pd.to_datetime(t, utc=True, errors="coerce")
    if frame["time"].isna().any():
        bad = int(frame.index[frame["time"].isna()][0]) + 2
        raise SourceError(f"{path}: line {bad}: time is not ISO 8601 or epoch seconds")
    return frame

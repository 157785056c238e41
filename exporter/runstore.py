"""Moved to :mod:`exporter.store`: this module re-exports its names for the code that still imports them here.

    from exporter.store import RunRecorder, RunStore           # new code
"""

from __future__ import annotations

from .store.attribution import ATTRIBUTION_CHUNK, AttributionRows
from .store.client import RunStore
from .store.recorder import USER_KEYS, RunRecorder, RunWriter, cap_state, is_outage
from .store.rows import DETAIL_COLUMNS, LINK_COLUMNS, SPAN_COLUMNS
from .store.runs import MAX_LINKED_RUNS
from .store.schema import (
    error_aliases,
    error_groups,
    errors,
    metadata,
    profiles,
    resolutions,
    runs,
    span_details,
    span_links,
    spans,
)

__all__ = [
    "ATTRIBUTION_CHUNK",
    "DETAIL_COLUMNS",
    "LINK_COLUMNS",
    "MAX_LINKED_RUNS",
    "SPAN_COLUMNS",
    "USER_KEYS",
    "AttributionRows",
    "RunRecorder",
    "RunStore",
    "RunWriter",
    "cap_state",
    "error_aliases",
    "error_groups",
    "errors",
    "is_outage",
    "metadata",
    "profiles",
    "resolutions",
    "runs",
    "span_details",
    "span_links",
    "spans",
]

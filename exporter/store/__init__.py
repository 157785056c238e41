"""The Flowscope store: one schema (:mod:`.schema`), its migrations (:mod:`.migrate`), the write path and the
pipeline's sink (:mod:`.recorder`), and the reads per area (:mod:`.runs`, :mod:`.errors`, :mod:`.attribution`,
:mod:`.profiles`), joined in :class:`RunStore`. Reads return typed rows (:mod:`.rows`), never dicts.

    from exporter.store import RunRecorder, RunStore
    store = RunStore(make_engine("sqlite:///var/flowscope.db"))   # upgrades the database to head first
"""

from __future__ import annotations

from .attribution import ATTRIBUTION_CHUNK, AttributionRows
from .client import RunStore
from .migrate import ensure_schema, upgrade
from .recorder import RunRecorder, cap_state, is_outage
from .rows import (
    ErrorGroup,
    ErrorGroupDetail,
    ErrorGroupSummary,
    ErrorOccurrence,
    ErrorRun,
    LinkedRun,
    Occurrence,
    RelatedGroup,
    Resolution,
    RunDetail,
    RunSummary,
    SpanView,
    WorkflowStats,
)
from .schema import metadata

__all__ = ["ATTRIBUTION_CHUNK", "AttributionRows", "ErrorGroup", "ErrorGroupDetail", "ErrorGroupSummary",
           "ErrorOccurrence", "ErrorRun", "LinkedRun", "Occurrence", "RelatedGroup", "Resolution", "RunDetail",
           "RunRecorder", "RunStore", "RunSummary", "SpanView", "WorkflowStats", "cap_state", "ensure_schema",
           "is_outage", "metadata", "upgrade"]

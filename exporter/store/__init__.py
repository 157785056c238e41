"""The Flowscope store: one schema (:mod:`.schema`), its migrations (:mod:`.migrate`), the write path and the
pipeline's sink (:mod:`.recorder`), and the reads per area (:mod:`.runs`, :mod:`.errors`, :mod:`.attribution`,
:mod:`.profiles`), joined in :class:`RunStore`.

    from exporter.store import RunRecorder, RunStore
    store = RunStore(make_engine("sqlite:///var/flowscope.db"))   # upgrades the database to head first
"""

from __future__ import annotations

from .attribution import ATTRIBUTION_CHUNK, AttributionRows
from .client import RunStore
from .migrate import ensure_schema, upgrade
from .recorder import RunRecorder, cap_state, is_outage
from .schema import metadata

__all__ = ["ATTRIBUTION_CHUNK", "AttributionRows", "RunRecorder", "RunStore", "cap_state", "ensure_schema",
           "is_outage", "metadata", "upgrade"]

"""The run store client: one object for the write path and the reads of every area, on one engine.

SQLAlchemy Core; SQLite by default, PostgreSQL by URL. Made on an engine, it brings the database to this
release's schema first (:func:`~exporter.store.migrate.ensure_schema`).

    store = RunStore(make_engine("sqlite:///var/flowscope.db"))
    store.list_runs(workflow="checkout", status="error", min_duration_ms=500)   # [RunSummary, ...]
    store.get_run(correlation_id).run.status                                     # RunDetail | None

Every read returns typed rows (:mod:`.rows`); the API's JSON is built from them in the backend.
"""

from __future__ import annotations

from .attribution import AttributionQueries
from .endpoints import EndpointQueries
from .errors import ErrorQueries
from .logs import LogQueries
from .profiles import ProfileQueries
from .recorder import RunWriter
from .runs import RunQueries


class RunStore(RunWriter, RunQueries, ErrorQueries, AttributionQueries, ProfileQueries, LogQueries,
               EndpointQueries):
    """The store client: writes from the recorder (:class:`~exporter.store.recorder.RunWriter`), reads for
    replay and the run page (:mod:`.runs`), error analysis (:mod:`.errors`), attribution (:mod:`.attribution`),
    profiles (:mod:`.profiles`), application log lines (:mod:`.logs`) and the endpoint inventory
    (:mod:`.endpoints`)."""

    def close(self) -> None:
        self.engine.dispose()

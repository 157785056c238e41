"""Typed rows: what the store's write path builds and its reads hand back, by name rather than by position.

Rows bound for the driver's ``executemany`` are NamedTuples in their table's column order (a tuple to the
driver, attributes to the code). The reads return NamedTuples for flat rows (one table row, or one aggregate
per key: :class:`RunSummary`, :class:`SpanView`, :class:`ErrorOccurrence`, :class:`ErrorGroup`, ...), so
``for t, cid in store.error_occurrences(...)`` keeps working and ``row._asdict()`` is the row's JSON object
with its keys in column order; and frozen dataclasses for what joins several of them (:class:`RunDetail`,
:class:`ErrorGroupSummary`, :class:`ErrorGroupDetail`). Nothing here is JSON: the API's bodies are built from
these at the edge (``backend.runs.service``, ``backend.analysis.service``)::

    detail = store.get_run("c-1")                   # RunDetail | None
    detail.run.status, [s.operation for s in detail.spans if s.is_step]
    for g in store.error_groups(since_ns):          # ErrorGroupSummary
        print(g.group.fingerprint, len(g.times), [p.fingerprint for p in g.propagated_to])

Reads that walk up to hundreds of thousands of rows (error groups, attribution, workflow summaries) unpack each
row into named locals in the statement that selects its columns: a SQLAlchemy ``Row``'s attribute access costs
about 15 times a tuple unpack (0.31 s against 0.02 s for 200,000 rows of 7 columns, SQLAlchemy 2.1 here).
The reads select their columns in a row type's field order (:func:`columns_of`), so ``RowType(*row)`` is right
by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson
from sqlalchemy import Column, Table

from .schema import span_details, span_links, spans


class SpanRow(NamedTuple):
    """One ``spans`` row, in the table's column order."""

    correlation_id: str
    span_id: str
    trace_id: str
    parent_span_id: str | None
    workflow: str
    service: str
    layer: str
    component: str
    operation: str
    start_ns: int
    end_ns: int
    status: str
    error_type: str | None
    error_message: str | None
    stack_trace: str | None
    attributes: str | None
    state: str | None
    is_step: bool
    kind: str | None
    resource_id: str | None


class DetailRow(NamedTuple):
    """One ``span_details`` row: the span's events and links as redacted JSON (``kind`` and ``resource`` only on
    rows written before revision 0006, which moved them to ``spans``; the write path leaves them None)."""

    correlation_id: str
    span_id: str
    end_ns: int
    kind: str | None
    resource: str | None
    events: str | None
    links: str | None


class LinkRow(NamedTuple):
    """One ``span_links`` row: a span's link to another trace."""

    correlation_id: str
    span_id: str
    link_trace_id: str
    link_span_id: str
    end_ns: int


# -- reads: runs ------------------------------------------------------------------------------------------


class RunSummary(NamedTuple):
    """One run as :meth:`~exporter.store.RunStore.list_runs`, ``runs_by_id`` and ``get_run`` return it: a
    ``runs`` row (a run whose root has not arrived has status ``in_progress`` and its spans' bounds)."""

    correlation_id: str
    workflow: str
    status: str
    start_ns: int
    end_ns: int
    duration_ms: float
    trace_id: str
    service: str
    user_hash: str | None
    error_type: str | None
    error_message: str | None


class WorkflowStats(NamedTuple):
    """One workflow's runs in a window (:meth:`~exporter.store.RunStore.workflow_summary`): how many, how many
    failed, their share, and the p50 and p95 duration (ms, nearest rank)."""

    workflow: str
    runs: int
    failed: int
    error_ratio: float
    p50_ms: float
    p95_ms: float


class SpanView(NamedTuple):
    """One span of a run as ``get_run`` returns it: the ``spans`` columns with ``attributes`` and ``state``
    parsed (``{}`` / None when absent), then its details: ``kind`` and ``resource`` (None when it has none),
    ``events`` and ``links`` (``[]``)."""

    correlation_id: str
    span_id: str
    trace_id: str
    parent_span_id: str | None
    workflow: str
    service: str
    layer: str
    component: str
    operation: str
    start_ns: int
    end_ns: int
    status: str
    error_type: str | None
    error_message: str | None
    stack_trace: str | None
    attributes: dict[str, Any]
    state: Any
    is_step: bool
    kind: str | None
    resource: dict[str, Any] | None
    events: list[Any]
    links: list[Any]


class LinkedRun(NamedTuple):
    """A run linked with another by span links: ``links_to`` a run one of its spans links to (a consumer's
    producer), ``linked_from`` a run with a span linking to its trace (workflow and trace_id are None for a
    linking run that is not stored whole yet)."""

    correlation_id: str
    workflow: str | None
    trace_id: str | None
    direction: str


# -- reads: errors ----------------------------------------------------------------------------------------


class ErrorOccurrence(NamedTuple):
    """One ``errors`` row: one error as it happened (a run's errors, a group's recent occurrences);
    ``cause_fingerprint`` is the group of the error that started its failure chain (None on an origin)."""

    id: int
    fingerprint: str
    correlation_id: str | None
    span_id: str | None
    workflow: str
    service: str
    layer: str
    component: str
    error_type: str
    message: str | None
    stack_trace: str | None
    time_ns: int
    cause_fingerprint: str | None


class ErrorGroup(NamedTuple):
    """One ``error_groups`` row: what a group says, when it was seen, how often in all, and when it was
    resolved and came back (None: never)."""

    fingerprint: str
    error_type: str
    template: str
    category: str
    first_seen_ns: int
    last_seen_ns: int
    count: int  # type: ignore[assignment]  # the column's name; shadows tuple.count, which no row uses
    resolved_at_ns: int | None
    regressed_at_ns: int | None


class Resolution(NamedTuple):
    """One ``resolutions`` row: what fixed a group, by whom, when."""

    id: int
    fingerprint: str
    note: str
    resolved_by: str | None
    resolved_at_ns: int


class RelatedGroup(NamedTuple):
    """A group related to another through failure chains (``caused_by``, ``propagated_to``), with how often."""

    fingerprint: str
    error_type: str
    template: str
    count: int  # type: ignore[assignment]  # as ErrorGroup.count


class Occurrence(NamedTuple):
    """When one error group occurred, and in which run (None: an error logged outside a run)."""

    time_ns: int
    correlation_id: str | None


class ErrorRun(NamedTuple):
    """A run an error group hit, with its workflow."""

    correlation_id: str
    workflow: str


# -- reads: what joins several rows -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunDetail:
    """One run with everything stored about it (:meth:`~exporter.store.RunStore.get_run`): its spans in start
    order, its errors in time order, how many profiles it has and the runs linked with it."""

    run: RunSummary
    spans: list[SpanView]
    errors: list[ErrorOccurrence]
    profiles: int
    linked_runs: list[LinkedRun]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorGroupSummary:
    """One group of :meth:`~exporter.store.RunStore.error_groups`: its row, and over the window its origin
    occurrences (``times``, one per run), the runs it hit, its layers, workflows and components (sorted), up to
    five sample runs, and the callers' groups it failed through (count in runs)."""

    group: ErrorGroup
    times: list[int]
    runs: int
    layers: list[str]
    workflows: list[str]
    components: list[str]
    sample_correlation_ids: list[str]
    propagated_to: list[RelatedGroup]


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorGroupDetail:
    """One group (:meth:`~exporter.store.RunStore.error_group`): its row, its latest occurrences (newest first),
    its resolutions (newest first), the origins' groups behind it and the callers' groups it failed through
    (count in occurrences)."""

    group: ErrorGroup
    recent: list[ErrorOccurrence]
    resolutions: list[Resolution]
    caused_by: list[RelatedGroup]
    propagated_to: list[RelatedGroup]


# -- reads: attribution -----------------------------------------------------------------------------------


@dataclass(slots=True)
class AttributionRows:
    """Columns of :meth:`RunStore.attribution_runs` (one entry per run: ``run_ids`` .. ``start_ns``) and of
    :meth:`RunStore.attribution_spans` (one per span: ``span_run``, the index of its run, .. ``attributes``,
    its raw JSON or None; one per span with a resource: ``resource_run``, ``resource``). Columns, not rows:
    attribution turns them into arrays; ``attribution_spans`` fills the span columns in place."""

    run_ids: list[str] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    duration_ms: list[float] = field(default_factory=list)
    start_ns: list[int] = field(default_factory=list)
    span_run: list[int] = field(default_factory=list)
    layer: list[str] = field(default_factory=list)
    component: list[str] = field(default_factory=list)
    operation: list[str] = field(default_factory=list)
    service: list[str] = field(default_factory=list)
    span_ms: list[float] = field(default_factory=list)
    attributes: list[str | None] = field(default_factory=list)
    resource_run: list[int] = field(default_factory=list)
    resource: list[str] = field(default_factory=list)


SPAN_COLUMNS = tuple(col.name for col in spans.columns)
DETAIL_COLUMNS = tuple(col.name for col in span_details.columns)
LINK_COLUMNS = tuple(col.name for col in span_links.columns)


def columns_of(table: Table, row_type: type[tuple[Any, ...]]) -> list[Column[Any]]:
    """``table``'s columns named by ``row_type``'s fields, in their order: ``select(*columns_of(runs, RunSummary))``
    reads rows that ``RunSummary(*row)`` builds."""
    return [table.c[name] for name in row_type._fields]  # type: ignore[attr-defined]


def to_json(value: Any) -> str:
    """JSON as the store keeps it (attributes, state, stacks): orjson, any key type, unknown values as str."""
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()

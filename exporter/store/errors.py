"""Error analysis: groups of errors with what started them and what they failed through, their occurrences
and runs, and resolutions, as typed rows (:mod:`.rows`).

    store.error_groups(since_ns, workflow="checkout")   # [ErrorGroupSummary, ...]
    store.error_group(fingerprint)                      # ErrorGroupDetail | None
    store.resolve(fingerprint, "raised the pool to 50", "ana", now_ns)
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from ..redact import Redactor
from .rows import (
    ErrorGroup,
    ErrorGroupDetail,
    ErrorGroupSummary,
    ErrorOccurrence,
    ErrorRun,
    Occurrence,
    RelatedGroup,
    Resolution,
    columns_of,
)
from .schema import error_aliases, error_groups, errors, resolutions


class ErrorQueries:
    """The error reads (and resolutions) of :class:`~exporter.store.RunStore`."""

    engine: Engine
    redactor: Redactor

    def error_groups(self, since_ns: int, workflow: str | None = None, limit: int = 100) -> list[ErrorGroupSummary]:
        """Groups that started failures since ``since_ns``, most often first: per group its origin
        occurrences (``times``, one per run; errors without a run each), runs affected, layers,
        workflows, components, sample correlation_ids, and ``propagated_to``: the callers' groups it
        failed through (:class:`~exporter.store.rows.RelatedGroup`, count in runs). A group seen
        only as a caller is not listed on its own: it is listed under its origins."""
        q = (select(errors.c.fingerprint, errors.c.time_ns, errors.c.layer, errors.c.workflow,
                    errors.c.correlation_id, errors.c.component, errors.c.cause_fingerprint)
             .where(errors.c.time_ns >= since_ns).order_by(errors.c.time_ns.desc()).limit(200_000))
        if workflow:
            q = q.where(errors.c.workflow == workflow)
        per: dict[str, dict[str, Any]] = {}
        callers: dict[str, dict[str, set[str | None]]] = {}
        seen: set[tuple[str, str]] = set()
        with self.engine.connect() as conn:
            for fp, t, layer, wf, cid, comp, cause in conn.execute(q):  # unpacked: up to 200,000 rows
                if cause is not None:
                    if cause != fp:  # the same exception re-raised by its callers is not a symptom of itself
                        callers.setdefault(cause, {}).setdefault(fp, set()).add(cid)
                    continue
                if cid:
                    if (fp, cid) in seen:
                        continue
                    seen.add((fp, cid))
                g = per.setdefault(fp, {"times": [], "layers": set(), "workflows": set(), "components": set(),
                                        "samples": [], "runs": set()})
                g["times"].append(t)
                if cid:
                    g["runs"].add(cid)
                    if len(g["samples"]) < 5:
                        g["samples"].append(cid)
                g["layers"].add(layer)
                g["workflows"].add(wf)
                g["components"].add(comp)
            if not per:
                return []
            wanted = list(set(per) | {fp for fps in callers.values() for fp in fps})
            rows: dict[str, ErrorGroup] = {}
            for i in range(0, len(wanted), 500):
                for r in conn.execute(select(*columns_of(error_groups, ErrorGroup))
                                      .where(error_groups.c.fingerprint.in_(wanted[i:i + 500]))):
                    row = ErrorGroup(*r)
                    rows[row.fingerprint] = row
        out = []
        for fp, g in per.items():
            group = rows.get(fp)
            if group is None:
                continue
            prop = sorted(((len(cids), cfp) for cfp, cids in callers.get(fp, {}).items() if cfp in rows),
                          key=lambda x: (-x[0], x[1]))[:10]
            out.append(ErrorGroupSummary(
                group=group, times=g["times"], runs=len(g["runs"]), layers=sorted(g["layers"]),
                workflows=sorted(g["workflows"]), components=sorted(g["components"]),
                sample_correlation_ids=g["samples"],
                propagated_to=[RelatedGroup(cfp, rows[cfp].error_type, rows[cfp].template, n) for n, cfp in prop]))
        out.sort(key=lambda r: (-len(r.times), r.group.fingerprint))
        return out[:limit]

    def _group_fingerprint(self, conn: Connection, fingerprint: str) -> str:
        """The group a fingerprint stands for: itself, or the older group it is an alias of."""
        target = conn.execute(select(error_aliases.c.group_fingerprint)
                              .where(error_aliases.c.fingerprint == fingerprint)).scalar()
        return target or fingerprint

    def error_group(self, fingerprint: str) -> ErrorGroupDetail | None:
        """One group with its latest occurrences (each with its ``cause_fingerprint``), its resolution history
        (newest first), ``caused_by`` (the origins' groups behind its occurrences as a caller) and
        ``propagated_to`` (the callers' groups it failed through), each a list of
        :class:`~exporter.store.rows.RelatedGroup` with count in occurrences. An alias fingerprint answers with
        its group."""
        group_q = select(*columns_of(error_groups, ErrorGroup))
        with self.engine.connect() as conn:
            row = conn.execute(group_q.where(error_groups.c.fingerprint == fingerprint)).first()
            if row is None:
                target = self._group_fingerprint(conn, fingerprint)
                if target == fingerprint:
                    return None
                row = conn.execute(group_q.where(error_groups.c.fingerprint == target)).first()
                if row is None:
                    return None
            group = ErrorGroup(*row)
            fp = group.fingerprint
            recent = [ErrorOccurrence(*r) for r in conn.execute(
                select(*columns_of(errors, ErrorOccurrence)).where(errors.c.fingerprint == fp)
                .order_by(errors.c.time_ns.desc(), errors.c.id.desc()).limit(20))]
            hist = self._resolutions(conn, fp)
            n = func.count().label("n")
            caused_by: list[tuple[str, int]] = [(f, k) for f, k in conn.execute(
                select(errors.c.cause_fingerprint, n)
                .where(errors.c.fingerprint == fp, errors.c.cause_fingerprint.is_not(None),
                       errors.c.cause_fingerprint != fp)
                .group_by(errors.c.cause_fingerprint).order_by(n.desc()).limit(20))]
            propagated: list[tuple[str, int]] = [(f, k) for f, k in conn.execute(
                select(errors.c.fingerprint, n).where(errors.c.cause_fingerprint == fp, errors.c.fingerprint != fp)
                .group_by(errors.c.fingerprint).order_by(n.desc()).limit(20))]
            names = {f: (etype, template) for f, etype, template in conn.execute(
                select(error_groups.c.fingerprint, error_groups.c.error_type, error_groups.c.template)
                .where(error_groups.c.fingerprint.in_([f for f, _ in caused_by] + [f for f, _ in propagated])))}

        def related(pairs: list[tuple[str, int]]) -> list[RelatedGroup]:
            return [RelatedGroup(f, *names[f], k) for f, k in pairs if f in names]

        return ErrorGroupDetail(group=group, recent=recent, resolutions=hist, caused_by=related(caused_by),
                                propagated_to=related(propagated))

    def error_occurrences(self, fingerprint: str, since_ns: int, limit: int = 100_000) -> list[Occurrence]:
        """(time_ns, correlation_id) of one group's occurrences since ``since_ns``, newest first, once per run:
        the runs it started a failure in; for a group seen only as a caller there, the runs it failed in."""
        q = (select(errors.c.time_ns, errors.c.correlation_id, errors.c.cause_fingerprint)
             .where(errors.c.fingerprint == fingerprint, errors.c.time_ns >= since_ns)
             .order_by(errors.c.time_ns.desc()).limit(limit))
        origins: list[Occurrence] = []
        others: list[Occurrence] = []
        seen: tuple[set[str | None], set[str | None]] = (set(), set())
        with self.engine.connect() as conn:
            for t, cid, cause in conn.execute(q):  # unpacked: up to 100,000 rows
                out, runs = (origins, seen[0]) if cause is None else (others, seen[1])
                if cid is None or cid not in runs:
                    runs.add(cid)
                    out.append(Occurrence(t, cid))
        return origins or others

    def resolutions(self, fingerprint: str) -> list[Resolution]:
        """A group's resolution notes, newest first."""
        with self.engine.connect() as conn:
            return self._resolutions(conn, fingerprint)

    @staticmethod
    def _resolutions(conn: Connection, fingerprint: str) -> list[Resolution]:
        return [Resolution(*h) for h in conn.execute(
            select(*columns_of(resolutions, Resolution)).where(resolutions.c.fingerprint == fingerprint)
            .order_by(resolutions.c.resolved_at_ns.desc(), resolutions.c.id.desc()))]

    def resolve(self, fingerprint: str, note: str, resolved_by: str | None, now_ns: int) -> bool:
        """Record a resolution; the group counts as resolved until an error that starts a failure comes back
        (:meth:`~exporter.store.recorder.RunWriter._write_errors`). An alias fingerprint resolves its group.
        False if unknown."""
        with self.engine.begin() as conn:
            fingerprint = self._group_fingerprint(conn, fingerprint)
            n = conn.execute(update(error_groups).where(error_groups.c.fingerprint == fingerprint)
                             .values(resolved_at_ns=now_ns, regressed_at_ns=None)).rowcount
            if not n:
                return False
            conn.execute(resolutions.insert().values(fingerprint=fingerprint, note=self.redactor.text(note),
                                                     resolved_by=resolved_by, resolved_at_ns=now_ns))
        return True

    def error_runs(self, fingerprint: str, since_ns: int, until_ns: int,
                   limit: int = 200_000) -> list[ErrorRun]:
        """(correlation_id, workflow) of the runs with an error of one group in ``[since_ns, until_ns)``:
        the selection of "what do the runs this error hit share" (attribution's ``select=error``)."""
        q = (select(errors.c.correlation_id, errors.c.workflow)
             .where(errors.c.fingerprint == fingerprint, errors.c.time_ns >= since_ns, errors.c.time_ns < until_ns,
                    errors.c.correlation_id.is_not(None))
             .distinct().limit(limit))
        with self.engine.connect() as conn:
            return [ErrorRun(cid, wf) for cid, wf in conn.execute(q)]

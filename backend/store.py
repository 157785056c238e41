"""The alert store: Alertmanager notifications, kept idempotently, through SQLAlchemy.

SQLite by default (a file), PostgreSQL (or anything SQLAlchemy speaks) by URL.
An alert's identity is Alertmanager's fingerprint plus its ``startsAt``: the
same notification twice changes nothing, and a resolved notification updates
the alert and adds a state change to its history.

    store = AlertStore("sqlite:///var/flowscope.db")
    store.record(alerts)            # alerts already validated by backend.alerts
    store.list(status="firing", workflow="checkout")
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Engine, String, any_, bindparam, func, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError

from exporter import conventions as c
from exporter.db import make_engine
from exporter.lease import lock_key
from exporter.store.migrate import ensure_schema
from exporter.store.schema import alert_events, alerts


@dataclass(frozen=True)
class IncomingAlert:
    fingerprint: str
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    generator_url: str


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _col(value: str | None, column: Column) -> str | None:
    """``value`` as ``column`` can hold it: no NUL (PostgreSQL refuses it in text), cut to the column's length.

    The columns are for filtering; the full labels stay in ``labels`` (JSON, where NUL is escaped).
    """
    if value is None:
        return None
    value = value.replace("\x00", "\ufffd")
    n = getattr(column.type, "length", None)
    return value[:n - 1] + "…" if n and len(value) > n else value


def _iso(dt: datetime | None) -> str | None:
    dt = _utc(dt)
    return dt.isoformat().replace("+00:00", "Z") if dt else None


class AlertStore:
    def __init__(self, url_or_engine: str | Engine):
        """Share the exporter's engine (``ex.db``) where there is one: on SQLite one engine means one writer queue."""
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        ensure_schema(self.engine)

    def record(self, incoming: list[IncomingAlert], receiver: str, now: datetime | None = None) -> dict[str, int]:
        """Store a notification's alerts in one transaction; returns counts of what changed.

        A fixed number of statements per notification, whatever its size: the existing alerts are read
        in chunks, then new alerts, updates and history events are each one ``executemany``. Alerts
        repeated within the notification count as they would one request after another. Two replicas
        of Alertmanager (HA) posting the same new alert at once collide on the unique identity: the
        loser's transaction is retried, and then finds the alert.
        """
        now = _utc(now or datetime.now(UTC))
        receiver = _col(receiver, alerts.c.receiver)
        try:
            return self._record(incoming, receiver, now)
        except IntegrityError:  # the other transaction has committed the alert: this time it is found
            return self._record(incoming, receiver, now)

    def _record(self, incoming: list[IncomingAlert], receiver: str, now: datetime) -> dict[str, int]:
        counts = {"created": 0, "updated": 0, "unchanged": 0}
        keys = {(a.fingerprint, _utc(a.starts_at)) for a in incoming}
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":  # replicas (or Alertmanager HA pairs) posting at once: one at a time
                conn.execute(select(func.pg_advisory_xact_lock(lock_key(c.ALERTS_LOCK))))
            known = self._existing(conn, keys)   # key -> [id, status]
            new: dict[tuple, dict] = {}          # key -> insert row, carrying the notification's last word
            new_events: list[tuple[tuple, str]] = []
            changed: dict[int, dict] = {}        # id -> update row
            events: list[dict] = []
            for a in incoming:
                key = (a.fingerprint, _utc(a.starts_at))
                annotations = json.dumps(a.annotations, sort_keys=True)
                if key in known:
                    row = known[key]
                    if row[1] == a.status:
                        counts["unchanged"] += 1
                        continue
                    row[1] = a.status
                    counts["updated"] += 1
                    if row[0] is None:  # created earlier in this notification
                        new[key].update(status=a.status, ends_at=_utc(a.ends_at), annotations=annotations)
                        new_events.append((key, a.status))
                    else:
                        changed[row[0]] = {"b_id": row[0], "b_status": a.status, "b_ends_at": _utc(a.ends_at),
                                           "b_annotations": annotations}
                        events.append({"alert_id": row[0], "status": a.status, "at": now})
                    continue
                known[key] = [None, a.status]
                counts["created"] += 1
                new[key] = {
                    "fingerprint": a.fingerprint, "starts_at": key[1], "ends_at": _utc(a.ends_at), "status": a.status,
                    "alertname": _col(a.labels.get("alertname", ""), alerts.c.alertname),
                    "severity": _col(a.labels.get("severity"), alerts.c.severity),
                    "workflow": _col(a.labels.get("workflow"), alerts.c.workflow),
                    "layer": _col(a.labels.get("layer"), alerts.c.layer),
                    "labels": json.dumps(a.labels, sort_keys=True), "annotations": annotations,
                    "generator_url": _col(a.generator_url, alerts.c.generator_url), "receiver": receiver,
                    "first_received_at": now, "updated_at": now}
                new_events.append((key, a.status))
            if new:  # a plain executemany, then the ids: psycopg parses a multi-row RETURNING slowly (3 s for 20k)
                conn.execute(alerts.insert(), list(new.values()))
                ids = {k: v[0] for k, v in self._existing(conn, set(new)).items()}
                events[:0] = [{"alert_id": ids[k], "status": s, "at": now} for k, s in new_events]
            if changed:
                conn.execute(alerts.update().where(alerts.c.id == bindparam("b_id")).values(
                    status=bindparam("b_status"), ends_at=bindparam("b_ends_at"),
                    annotations=bindparam("b_annotations"), updated_at=now), list(changed.values()))
            if events:
                conn.execute(alert_events.insert(), events)
        return counts

    @staticmethod
    def _existing(conn, keys: set[tuple[str, datetime]]) -> dict[tuple[str, datetime], list]:
        """``{(fingerprint, starts_at): [id, status]}`` of the stored alerts among ``keys``."""
        out: dict[tuple[str, datetime], list] = {}
        fps = sorted({fp for fp, _ in keys})
        if conn.dialect.name == "postgresql":
            # one array parameter: psycopg prepares a statement it has run 5 times, and the generic plan of
            # an IN list of 500 parameters compares every row with every value (9 s for 20k alerts)
            chunks = [alerts.c.fingerprint == any_(bindparam("fps", fps, type_=postgresql.ARRAY(String)))]
        else:  # SQLite caps the bind parameters of a statement
            chunks = [alerts.c.fingerprint.in_(fps[i:i + 500]) for i in range(0, len(fps), 500)]
        for where in chunks:
            for r in conn.execute(select(alerts.c.id, alerts.c.status, alerts.c.fingerprint, alerts.c.starts_at)
                                  .where(where)):
                key = (r.fingerprint, _utc(r.starts_at))
                if key in keys:
                    out[key] = [r.id, r.status]
        return out

    def list(self, status: str | None = None, severity: str | None = None, workflow: str | None = None,
             since: datetime | None = None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(alerts)
        if status:
            q = q.where(alerts.c.status == status)
        if severity:
            q = q.where(alerts.c.severity == severity)
        if workflow:
            q = q.where(alerts.c.workflow == workflow)
        if since:
            q = q.where(alerts.c.updated_at >= _utc(since))
        q = q.order_by(alerts.c.starts_at.desc(), alerts.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
            ids = [r["id"] for r in rows]
            history: dict[int, list] = {i: [] for i in ids}
            if ids:
                for e in conn.execute(select(alert_events).where(alert_events.c.alert_id.in_(ids))
                                      .order_by(alert_events.c.id)).mappings():
                    history[e["alert_id"]].append({"status": e["status"], "at": _iso(e["at"])})
        return [{
            "fingerprint": r["fingerprint"], "status": r["status"], "alertname": r["alertname"],
            "severity": r["severity"], "workflow": r["workflow"], "layer": r["layer"],
            "labels": json.loads(r["labels"]), "annotations": json.loads(r["annotations"]),
            "starts_at": _iso(r["starts_at"]), "ends_at": _iso(r["ends_at"]), "generator_url": r["generator_url"],
            "receiver": r["receiver"], "updated_at": _iso(r["updated_at"]), "history": history[r["id"]],
        } for r in rows]

    def close(self) -> None:
        self.engine.dispose()

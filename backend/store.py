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
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (Column, DateTime, Engine, ForeignKey, Integer, MetaData, String, Table, Text,
                        UniqueConstraint, select)

from exporter.db import make_engine

metadata = MetaData()

alerts = Table(
    "alerts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("fingerprint", String(64), nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    Column("alertname", String(200), nullable=False),
    Column("severity", String(50), nullable=True),
    Column("workflow", String(200), nullable=True),
    Column("layer", String(50), nullable=True),
    Column("labels", Text, nullable=False),
    Column("annotations", Text, nullable=False),
    Column("generator_url", Text, nullable=True),
    Column("receiver", String(200), nullable=True),
    Column("first_received_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("fingerprint", "starts_at", name="uq_alert_identity"),
)

alert_events = Table(
    "alert_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alert_id", Integer, ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("status", String(16), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)


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
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _iso(dt: datetime | None) -> str | None:
    dt = _utc(dt)
    return dt.isoformat().replace("+00:00", "Z") if dt else None


class AlertStore:
    def __init__(self, url_or_engine: str | Engine):
        """Share the exporter's engine (``ex.db``) where there is one: on SQLite one engine means one writer queue."""
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        metadata.create_all(self.engine)

    def record(self, incoming: list[IncomingAlert], receiver: str, now: datetime | None = None) -> dict[str, int]:
        """Store a notification's alerts in one transaction; returns counts of what changed."""
        now = _utc(now or datetime.now(timezone.utc))
        created = updated = unchanged = 0
        with self.engine.begin() as conn:
            for a in incoming:
                row = conn.execute(select(alerts.c.id, alerts.c.status, alerts.c.ends_at).where(
                    alerts.c.fingerprint == a.fingerprint, alerts.c.starts_at == _utc(a.starts_at))).first()
                if row is None:
                    res = conn.execute(alerts.insert().values(
                        fingerprint=a.fingerprint, starts_at=_utc(a.starts_at), ends_at=_utc(a.ends_at),
                        status=a.status, alertname=a.labels.get("alertname", ""), severity=a.labels.get("severity"),
                        workflow=a.labels.get("workflow"), layer=a.labels.get("layer"),
                        labels=json.dumps(a.labels, sort_keys=True), annotations=json.dumps(a.annotations, sort_keys=True),
                        generator_url=a.generator_url, receiver=receiver, first_received_at=now, updated_at=now))
                    conn.execute(alert_events.insert().values(alert_id=res.inserted_primary_key[0], status=a.status,
                                                              at=now))
                    created += 1
                elif row.status != a.status:
                    conn.execute(alerts.update().where(alerts.c.id == row.id).values(
                        status=a.status, ends_at=_utc(a.ends_at), updated_at=now,
                        annotations=json.dumps(a.annotations, sort_keys=True)))
                    conn.execute(alert_events.insert().values(alert_id=row.id, status=a.status, at=now))
                    updated += 1
                else:
                    unchanged += 1
        return {"created": created, "updated": updated, "unchanged": unchanged}

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

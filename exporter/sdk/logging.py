"""A JSON log formatter that stamps correlation_id, trace_id and span_id on every record.

    handler.setFormatter(JsonFormatter())

Grafana's Loki derived fields can then link ``correlation_id`` to the run page.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from .context import current_ids

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        cid, tid, sid = current_ids()
        out = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "correlation_id": getattr(record, "correlation_id", None) or cid,
            "trace_id": getattr(record, "trace_id", None) or tid,
            "span_id": getattr(record, "span_id", None) or sid,
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and k not in out:
                out[k] = v
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()

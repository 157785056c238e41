"""The app's log records with their run's ids: a JSON formatter for the shipper you run, or a handler that
sends them to Flowscope (:class:`LogHandler`).

    handler.setFormatter(JsonFormatter())                       # a file or stdout your shipper reads
    logging.getLogger().addHandler(LogHandler(logging.INFO))    # or straight to Flowscope, batched like spans

Grafana's Loki derived fields can then link ``correlation_id`` to the run page.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from .. import conventions as c
from ..model import LogLine
from ..validate import clean_value
from .context import active_step, current_ids

if TYPE_CHECKING:
    from .sinks import SdkSink

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


#: Loggers whose records (and their children's) the handler never sends: Flowscope's own (its sender's warnings
#: would feed it).
OWN_LOGGERS = ("flowscope", "exporter")
#: Threads whose records the handler never sends: Flowscope's senders and writers (``flowscope-*``); a library
#: logging on one of them (urllib3 under the sender) would otherwise queue a line per line it sends.
OWN_THREAD_PREFIX = "flowscope-"
#: Python levels → (stored level, OpenTelemetry severity number), as OpenTelemetry's own LoggingHandler maps them.
_LEVELS = ((logging.CRITICAL, "fatal", 21), (logging.ERROR, "error", 17), (logging.WARNING, "warn", 13),
           (logging.INFO, "info", 9), (logging.DEBUG, "debug", 5))
_exc_formatter = logging.Formatter()


class _Busy(threading.local):
    active = False


class LogHandler(logging.Handler):
    """Sends the app's log records to Flowscope through the SDK's sink, like its spans.

    Each record becomes one line (:class:`~exporter.model.LogLine`): its level, logger, message, exception
    text (and ``stack_info``), its ``extra=`` fields as attributes, and the correlation_id, trace_id, span_id
    and workflow of the run or request in scope (an ``extra`` ``correlation_id`` / ``trace_id`` / ``span_id``
    wins). Remote mode queues it on the sink's sender thread, which posts batches to ``POST /api/v1/logs``
    (bounded, retried; a full queue drops and counts in ``flowscope_sdk_spans_dropped_total``); in-process
    mode hands it to the pipeline (``Pipeline.ingest_logs``). ::

        import logging, flowscope
        logging.getLogger().addHandler(flowscope.LogHandler(level=logging.INFO))
        log.warning("card declined", extra={"order_id": 7})   # a line with order_id=7 and the run's ids

    ``emit`` never raises and never blocks on I/O; what it could not send is counted in :attr:`dropped`.
    Records of Flowscope's own loggers (:data:`OWN_LOGGERS`), of its threads (:data:`OWN_THREAD_PREFIX`), and
    any logged while this handler is sending one (a warning from inside the sink) are not sent: nothing loops.
    ``sink`` defaults to the SDK's (:func:`exporter.sdk.configure`), looked up per record so a later
    ``configure`` takes effect; ``service`` defaults to the run's, else ``FLOWSCOPE_SERVICE_NAME``.
    """

    def __init__(self, level: int = logging.NOTSET, sink: SdkSink | None = None, service: str | None = None):
        super().__init__(level)
        self.sink = sink
        self.service = service
        #: records that could not be turned into a line or queued (a broken record, a sink that raised)
        self.dropped = 0
        self._busy = _Busy()
        self._fallback_service: str | None = None  # FLOWSCOPE_SERVICE_NAME, read once, for lines outside a run

    def handle(self, record: logging.LogRecord) -> bool:
        """``emit`` without the handler's lock: emit is thread-safe (a queue, or the pipeline's own lock), and
        holding the handler's lock while the pipeline takes the metric store's would deadlock against a thread
        that logs while holding the store's lock (a scrape reporting a series it cannot write)."""
        ok = bool(self.filter(record))
        if ok:
            self.emit(record)
        return ok

    def emit(self, record: logging.LogRecord) -> None:
        busy = self._busy
        if busy.active or record.name.partition(".")[0] in OWN_LOGGERS \
                or threading.current_thread().name.startswith(OWN_THREAD_PREFIX):
            return
        busy.active = True
        try:
            line = self.to_line(record)
            sink = self.sink
            if sink is None:
                from . import default_sink
                sink = default_sink()
            sink.logs((line,))
        except Exception:  # noqa: BLE001 - the app's logging must never fail because of Flowscope
            self.dropped += 1
        finally:
            busy.active = False

    def to_line(self, record: logging.LogRecord) -> LogLine:
        """The line a record becomes (no I/O; the ids in scope are read here, on the logging thread)."""
        level, number = "trace", 1
        for floor, name, n in _LEVELS:
            if record.levelno >= floor:
                level, number = name, n
                break
        try:
            body = record.getMessage()
        except Exception:  # noqa: BLE001 - a format string that doesn't match its args: keep what was logged
            body = f"{record.msg} {record.args!r}"
        exception = None
        if record.exc_info:
            exception = record.exc_text or _exc_formatter.formatException(record.exc_info)
        if record.stack_info:
            exception = f"{exception}\n{record.stack_info}" if exception else record.stack_info
        attrs = _attributes(record)
        cid = attrs.pop("correlation_id", None)
        tid = attrs.pop("trace_id", None)
        sid = attrs.pop("span_id", None)
        workflow = attrs.pop("workflow", None)
        service = self.service
        cur = active_step()
        if cur is not None:
            run, step = cur
            cid, tid, sid = cid or run.correlation_id, tid or run.trace_id, sid or step
            workflow = workflow or run.workflow
            service = service or run.service
        elif not (cid and tid):
            rcid, rtid, rsid = current_ids()
            cid, tid, sid = cid or rcid, tid or rtid, sid or rsid
        if service is None:
            service = self._fallback_service
            if service is None:
                service = self._fallback_service = _default_service()
        return LogLine(time_ns=int(record.created * 1_000_000) * 1000, level=level, body=body, service=service,
                       severity_number=number, logger=record.name, workflow=_str(workflow),
                       correlation_id=_str(cid), trace_id=_str(tid), span_id=_str(sid), attributes=attrs,
                       exception=exception, source=c.LOG_SOURCE_APP)


def _attributes(record: logging.LogRecord) -> dict[str, Any]:
    """The record's ``extra=`` fields as values every sink holds, taken now, on the logging thread: the sender reads
    them later, when the app may have changed them (a dict resized mid-read) or their text may fail (a detached
    ORM object); a value whose text fails is its type's name, so it costs its line nothing, and no other line."""
    raw = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
    try:
        out = clean_value(raw)[0]
    except Exception:  # noqa: BLE001 - an extra whose __str__ raises: isolate it, key by key
        out = {}
        for k, v in raw.items():
            try:
                out[k] = clean_value(v)[0]
            except Exception:  # noqa: BLE001
                out[k] = f"<{type(v).__name__}>"
    return out if type(out) is dict else {}


def _str(v: object) -> str | None:
    return None if v is None or v == "" else v if type(v) is str else str(v)


def _default_service() -> str:
    from .tracer import _default_service as service

    return service()

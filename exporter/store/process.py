"""The run store's writer in a process of its own: decoding and storing no longer share one GIL.

:class:`~exporter.store.recorder.RunRecorder` keeps everything a producer touches in the serving process (the
bounded queue, whole-run shedding, the drop counters, the retry while the database is down); only the writing
moves. Its writer thread hands each batch to a :class:`WriterProcess` and waits for the answer, so one batch is in
flight and the queue in front of it is the bounded, counted channel::

    writer = WriterProcess(engine.url, redactor.fragments, state_max_bytes=16_384).start()
    result = writer.write(batch)       # WriteResult: items not written (a suffix), counts, poisoned items
    writer.close()

The child builds rows, redacts and writes in its own interpreter (:func:`~exporter.store.recorder.write_isolating`,
the same code the in-thread writer runs). A batch crosses the pipe as one pickle of plain tuples: a span is the
tuple of :data:`SPAN_FIELDS` (events and links decoded on the way out), an SDK fast-path step as it was queued
(its run pickles as its :class:`~exporter.sdk.tracer.RunIds`, once per batch, and the child builds the row), an
error record or a profile itself. The parent pays about a microsecond a span for that, a quarter of one for an SDK
step; the child pays the row building, the redaction and the database.

The child is a fresh interpreter (:data:`_CHILD_MAIN`, never a fork: the serving process has
threads by then, and a fork would copy their locks) on one end of a socket pair. It reads its settings from the
pipe (the database URL may hold a password, so never from its command line), ignores SIGINT (a terminal's
Ctrl-C reaches the whole process group; the parent decides when the writer stops) and exits when its pipe
closes, so it never outlives the parent. If it dies, :meth:`WriterProcess.write` raises :class:`WriterDied`, a
retryable error to the recorder's retry policy, and the next attempt starts a new one.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from operator import attrgetter
from typing import Any

from ..model import Span
from ..retry import SendError
from .rows import SPAN_COLUMNS

log = logging.getLogger("flowscope.runstore")

#: A span's fields, in the order a span crosses the pipe (``events`` and ``links`` read through the properties,
#: which decode what a decoder deferred).
SPAN_FIELDS = ("trace_id", "span_id", "parent_span_id", "correlation_id", "workflow", "service", "layer", "component",
               "operation", "start_ns", "end_ns", "status", "error_type", "error_message", "attributes", "state",
               "is_step", "user", "stack_trace", "kind", "resource", "events", "links")
_N_SPAN = len(SPAN_FIELDS)
_span_fields = attrgetter(*SPAN_FIELDS)
#: The fields of a span whose attributes, events and links travel as its OTLP protobuf bytes instead.
PB_FIELDS = tuple(f for f in SPAN_FIELDS if f not in ("attributes", "events", "links"))
_N_PB = len(PB_FIELDS) + 1
_pb_fields = attrgetter(*PB_FIELDS)
#: The length of an SDK fast-path step (:data:`exporter.sinks.FastStep`), which crosses as it was queued.
_N_FAST = 8
assert len({_N_SPAN, _N_PB, len(SPAN_COLUMNS), _N_FAST}) == 4, \
    "decode() and RunWriter.write tell a span, a protobuf span, a row and a fast-path step by length"

#: Seconds the child may take to start (import, connect, create or check the schema) before start() gives up.
START_TIMEOUT_S = 60.0
#: Seconds close() waits for the child to exit after its pipe closes, before it is killed.
EXIT_TIMEOUT_S = 10.0


class WriterDied(SendError):
    """The writer process is gone (killed, out of memory, crashed); the batch it had is retried by a new one."""

    def __init__(self, message: str):
        super().__init__(message, reason="writer_died", retryable=True)


class WriterOutage(SendError):
    """The database was unavailable to the writer process; ``left`` items at the end of the batch are unwritten."""

    def __init__(self, message: str, left: int):
        super().__init__(message, reason="outage", retryable=True)
        self.left = left


@dataclass(slots=True)
class WriteResult:
    """What the child did with one batch.

    ``left``: how many items at the end of the batch are not written (the database became unavailable;
    ``error`` says why); ``counts``: runs and truncated states written; ``poisoned``: one ``(description, error
    type, message)`` per item the database refused while it was up (dropped, the rest of the batch stored)."""

    left: int = 0
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    poisoned: list[tuple[str, str, str]] = field(default_factory=list)


def encode(items: list[Any]) -> tuple[bytes, list[Any], list[tuple[Any, BaseException]]]:
    """One batch as the bytes that cross the pipe (see the module docstring), the items they hold, and
    ``(item, error)`` for each item that cannot cross (its row cannot be built, or it cannot be pickled): those
    are the caller's to drop as poison. An SDK fast-path step crosses as it is: its row costs the child, not
    the app (the parent's share of a step is this pickle, about 0.25 us against 0.5 us with the row built here)."""
    from ..decode.otlp import pb_span_bytes  # here: importing the store must not load the OTLP decoder

    out: list[Any] = []
    add = out.append
    kept = items
    bad: list[tuple[Any, BaseException]] = []
    for i, it in enumerate(items):
        try:
            if type(it) is tuple:  # an SDK fast-path step: its run pickles as its RunIds
                add(it)
            elif isinstance(it, Span):
                pb = pb_span_bytes(it)
                if pb is None:
                    add(_span_fields(it))
                else:  # attributes, events and links still as received: the child decodes them
                    add((*_pb_fields(it), pb))
            else:
                add(it)
        except Exception as e:  # noqa: BLE001 - one item's failure must not cost the batch
            if not bad:
                kept = items[:i]
            bad.append((it, e))
        else:
            if bad:
                kept.append(it)
    try:
        return pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL), kept, bad
    except Exception:  # noqa: BLE001 - rare: find the items that cannot be pickled, one by one
        pass
    data, good = [], []
    for it, wire in zip(kept, out):
        try:
            pickle.dumps(wire, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - RecursionError, PicklingError, TypeError: the item is poison
            bad.append((it, e))
        else:
            data.append(wire)
            good.append(it)
    return pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL), good, bad


_new_span = object.__new__


def decode(data: bytes) -> list[Any]:
    """The items of :func:`encode`'s bytes: Spans again, rows and records as they were."""
    from ..decode.otlp import defer_to_pb_bytes

    items: list[Any] = pickle.loads(data)
    for i, it in enumerate(items):
        if type(it) is tuple and len(it) == _N_PB:
            s = _new_span(Span)
            (s.trace_id, s.span_id, s.parent_span_id, s.correlation_id, s.workflow, s.service, s.layer, s.component,
             s.operation, s.start_ns, s.end_ns, s.status, s.error_type, s.error_message, s.state, s.is_step, s.user,
             s.stack_trace, s.kind, s.resource, pb) = it
            defer_to_pb_bytes(s, pb)
            items[i] = s
        elif type(it) is tuple and len(it) == _N_SPAN:
            s = _new_span(Span)
            (s.trace_id, s.span_id, s.parent_span_id, s.correlation_id, s.workflow, s.service, s.layer, s.component,
             s.operation, s.start_ns, s.end_ns, s.status, s.error_type, s.error_message, s._attrs, s.state,
             s.is_step, s.user, s.stack_trace, s.kind, s.resource, events, links) = it
            s._raw_attrs = None
            s._details = None if events is None and links is None else (events, links)
            items[i] = s
    return items


def _child(fd: int) -> None:
    """The writer process (:data:`_CHILD_MAIN` with the socket's descriptor): read its settings, then write each
    batch it is sent and answer with a :class:`WriteResult`, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(fd)
    url, fragments, state_max_bytes, level = conn.recv()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[writer]: %(message)s")
    from ..db import make_engine
    from ..redact import Redactor
    from .recorder import RunWriter, describe, driver_message, write_isolating

    try:
        engine = make_engine(url)
        store = RunWriter(engine, Redactor(fragments), state_max_bytes)
    except Exception as e:  # noqa: BLE001 - told to the parent, which logs it and retries
        conn.send(("failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break
        left, error, counts, poisoned = write_isolating(store, decode(data))
        conn.send(WriteResult(len(left), None if error is None else f"{type(error).__name__}: {error}",
                              counts, [(describe(it), type(e).__name__, driver_message(e)) for it, e in poisoned]))
    engine.dispose()


class WriterProcess:
    """The run store's writer process, seen from the serving process (see the module docstring).

    Not thread-safe: one thread (the recorder's writer thread) calls :meth:`write`; :meth:`close` is the
    owner's, after that thread has stopped.
    """

    def __init__(self, url: str, fragments: tuple[str, ...], state_max_bytes: int = 16_384,
                 start_timeout_s: float = START_TIMEOUT_S):
        self.url = url
        self.fragments = tuple(fragments)
        self.state_max_bytes = state_max_bytes
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> WriterProcess:
        """Start the child and wait until it has opened the store; raises :class:`WriterDied` if it cannot."""
        with self._lock:
            if self.alive():
                return self
            self._stop_child()
            mine, theirs = socket.socketpair()
            with mine, theirs:
                proc = subprocess.Popen([sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno())],
                                        pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                        cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": _import_path()})
                conn = Connection(os.dup(mine.fileno()))
            self._proc, self._conn = proc, conn
            try:
                conn.send((self.url, self.fragments, self.state_max_bytes,
                           logging.getLogger().getEffectiveLevel()))
                if not conn.poll(self.start_timeout_s):
                    raise WriterDied(f"the run store's writer process did not start in {self.start_timeout_s:g} s")
                kind, detail = conn.recv()
            except (EOFError, OSError):
                kind, detail = "failed", f"exited with status {proc.wait(5)}"
            if kind != "ready":
                self._stop_child()
                raise WriterDied(f"the run store's writer process could not open the store: {detail}")
            log.info("run store writer process %d started", detail)
        return self

    def write(self, items: list[Any]) -> tuple[WriteResult, list[Any], list[tuple[Any, BaseException]]]:
        """Write one batch in the child: its :class:`WriteResult`, the items it was sent (``result.left`` counts
        from their end) and those that could not be sent (:func:`encode`). Raises :class:`WriterDied` when the
        child is gone (a new one is started on the next call)."""
        if not self.alive():
            self.restarts += self._proc is not None
            self.start()
        conn, proc = self._conn, self._proc
        assert conn is not None and proc is not None
        data, kept, bad = encode(items)
        try:
            conn.send_bytes(data)
            while not conn.poll(1.0):
                if proc.poll() is not None:
                    raise EOFError
            result: WriteResult = conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            code = proc.poll()
            self._stop_child()
            self.restarts += 1
            raise WriterDied(f"the run store's writer process died (exit status {code}): {type(e).__name__}") from e
        return result, kept, bad

    def close(self, timeout_s: float = EXIT_TIMEOUT_S) -> None:
        """Close the pipe and wait for the child to exit (it finishes the batch it has); kill it past
        ``timeout_s``."""
        with self._lock:
            self._stop_child(timeout_s)

    def _stop_child(self, timeout_s: float = EXIT_TIMEOUT_S) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            conn.close()
        if proc is not None:
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("run store writer process %d did not exit in %g s: killed", proc.pid, timeout_s)
                proc.kill()
                proc.wait(5)


def _import_path() -> str:
    """PYTHONPATH for the child: where this process found ``exporter`` first, so a checkout runs its own code."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    rest = os.environ.get("PYTHONPATH")
    return here + (os.pathsep + rest if rest else "")


#: The child's entry point: this module under its own name (``-m`` would run a second copy as ``__main__``,
#: whose WriteResult the parent could not unpickle).
_CHILD_MAIN = "import sys; from exporter.store.process import _child; _child(int(sys.argv[1]))"

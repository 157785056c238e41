"""The run store's writer in a process of its own: decoding and storing no longer share one GIL.

:class:`~exporter.store.recorder.RunRecorder` keeps everything a producer touches in the serving process (the
bounded queue, whole-run shedding, the drop counters, the retry while the database is down); only the writing
moves. Its writer thread hands each batch to a :class:`WriterProcess` and waits for the answer, so one batch is in
flight and the queue in front of it is the bounded, counted channel::

    writer = WriterProcess(engine.url, redactor.fragments, state_max_bytes=16_384).start()
    result, left, unsent = writer.write(batch)   # WriteResult (counts, poisoned items), items not written, refused
    writer.close()

A batch goes over in chunks of :data:`CHUNK_ITEMS`, each a transaction of its own as a batch was, and the child
never waits for the parent: while it writes one chunk, the next is encoded and waiting. On Linux a chunk's bytes
go through one of two shared memory files (``memfd``, one ``pwrite`` and one ``pread``) and the pipe carries only
which one and how long, so the child can start the next chunk the moment it has answered the last, whether or not
the serving process's threads let the parent's writer thread run just then. (Through the socket, 2 MB take a dozen
writes, each waiting for the GIL: measured at the store's pace, the child sat idle a fifth of the time.) Elsewhere
the bytes go through the pipe, one chunk at a time.

The child builds rows, redacts and writes in its own interpreter (:func:`~exporter.store.recorder.write_isolating`,
the same code the in-thread writer runs). A batch crosses the pipe as one pickle of plain tuples: a span is the
tuple of :data:`SPAN_FIELDS` (events and links decoded on the way out), an SDK fast-path step as it was queued
(its run pickles as its :class:`~exporter.sdk.tracer.RunIds`, once per batch, and the child builds the row), an
error record or a profile itself. The parent pays about a microsecond a span for that, a quarter of one for an SDK
step; the child pays the row building, the redaction and the database.

The child is a fresh interpreter (:data:`_CHILD_MAIN`, never a fork: the serving process has
threads by then, and a fork would copy their locks) on one end of a socket pair. It reads its settings from the
pipe (the database URL may hold a password, so never from its command line), ignores SIGINT and SIGTERM (a
terminal's Ctrl-C and a supervisor's SIGTERM reach the whole process group; the parent decides when the writer
stops) and exits when its pipe
closes, so it never outlives the parent. If it dies, :meth:`WriterProcess.write` raises :class:`WriterDied`, a
retryable error to the recorder's retry policy, and the next attempt starts a new one.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from operator import attrgetter
from typing import Any, NoReturn

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

#: Items per chunk of a batch sent to the child (module docstring): large enough that a chunk's transactions and
#: round trip are a small share of it (2,500 stored 10 % fewer spans/s than 5,000), small enough that a batch of
#: the recorder's (up to 20,000) is several.
CHUNK_ITEMS = 5_000
#: What announces a chunk in a shared memory slot on the pipe: this, then the slot and the length (``_SLOT``).
_SLOT_TAG = b"SLOT"
_SLOT = struct.Struct(">BQ")
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
    #: the child could not unpickle the chunk (an item of a class it cannot import): why; every item of the chunk
    #: is then poison, and nothing of it was written
    undecodable: str | None = None


class Undecodable(Exception):
    """An item of a chunk the writer process could not unpickle (see :attr:`WriteResult.undecodable`)."""


class _Pickler(pickle.Pickler):
    """Pickles a batch with every ``str`` subclass as plain text. The app's names may be members of its own
    ``str`` enums (``class Layer(str, Enum)`` in a script: its ``__main__``, which the writer process cannot
    import), and a row keeps only their text. Exact ``str``, tuples and the other builtins never get here."""

    def reducer_override(self, obj: Any) -> Any:
        if issubclass(type(obj), str):  # not isinstance: a proxy that claims to be a str pickles as it says
            return str, (str.__str__(obj),)
        return NotImplemented


def _dumps(obj: Any) -> bytes:
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buf.getvalue()


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
        return _dumps(out), kept, bad
    except Exception:  # noqa: BLE001 - rare: find the items that cannot be pickled, one by one
        pass
    data, good = [], []
    for it, wire in zip(kept, out):
        try:
            _dumps(wire)
        except Exception as e:  # noqa: BLE001 - RecursionError, PicklingError, TypeError: the item is poison
            bad.append((it, e))
        else:
            data.append(wire)
            good.append(it)
    return _dumps(data), good, bad


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
    # a terminal's Ctrl-C and a supervisor's SIGTERM reach the whole process group (systemd's default KillMode,
    # coreutils' timeout): the serving process decides when its writer stops, by closing the pipe after its last
    # batch; a writer that went first would be started again just to write that batch
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn = Connection(fd)
    url, fragments, state_max_bytes, level, slots = conn.recv()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[writer]: %(message)s")
    from ..db import make_engine
    from ..redact import Redactor
    from .recorder import RunWriter, describe, driver_message, write_isolating

    try:
        engine = make_engine(url, bulk_writer=True)
        store = RunWriter(engine, Redactor(fragments), state_max_bytes)
    except Exception as e:  # noqa: BLE001 - told to the parent, which logs it and retries
        conn.send(("failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"))
        return
    conn.send(("ready", os.getpid()))
    checkpoint = checkpoint_in_background(url)
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            break
        if data[:len(_SLOT_TAG)] == _SLOT_TAG:
            slot, n = _SLOT.unpack_from(data, len(_SLOT_TAG))
            data = _read_slot(slots[slot], n)
        try:
            items = decode(data)
        except Exception as e:  # noqa: BLE001 - a chunk this process cannot read must not end it (and the next)
            conn.send(WriteResult(undecodable=f"{type(e).__name__}: {str(e)[:300]}"))
            continue
        left, error, counts, poisoned = write_isolating(store, items)
        if checkpoint is not None:
            checkpoint.set()
        conn.send(WriteResult(len(left), None if error is None else f"{type(error).__name__}: {error}",
                              counts, [(describe(it), type(e).__name__, driver_message(e)) for it, e in poisoned]))
    engine.dispose()


#: Seconds between the writer process's checkpoints of a SQLite store when no write asks for one sooner.
CHECKPOINT_INTERVAL_S = 5.0


def checkpoint_in_background(url: str, interval_s: float = CHECKPOINT_INTERVAL_S) -> threading.Event | None:
    """For a SQLite store: a daemon thread that checkpoints its WAL on a connection of its own each time the
    returned event is set (the writer sets it after each chunk's commit), and every ``interval_s`` (``PRAGMA
    wal_checkpoint(PASSIVE)``: it never blocks the writer or a reader, and the sqlite3 module lets go of the GIL
    while SQLite copies and syncs). Started right after a commit, it copies the whole WAL while the writer builds
    its next rows, so the next commit starts the WAL over; the writer's commits only append. None for other
    databases. The thread ends with the process; a checkpoint that fails (busy, or the file gone) is tried again."""
    from ..db import sqlite_path

    path = sqlite_path(url)
    if path is None:
        return None
    due = threading.Event()

    def run() -> None:
        import sqlite3

        db = sqlite3.connect(path, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=1000")
        while True:
            due.wait(interval_s)
            due.clear()
            try:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as e:
                log.debug("background checkpoint failed (retried): %s", e)

    threading.Thread(target=run, name="flowscope-checkpoint", daemon=True).start()
    return due


def _read_slot(fd: int, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        part = os.pread(fd, n - got, got)
        if not part:
            raise EOFError(f"shared memory slot holds {got} of {n} bytes")
        parts.append(part)
        got += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


#: A slot larger than this and than twice the chunk it now holds is cut down to that chunk: a burst of big chunks
#: (16 KB states) does not keep its tens of megabytes for good.
SLOT_KEEP_BYTES = 8 << 20


def _write_slot(fd: int, data: bytes) -> None:
    view, done = memoryview(data), 0
    while done < len(data):
        done += os.pwrite(fd, view[done:], done)
    _trim_slot(fd, done)


def _trim_slot(fd: int, holds: int) -> None:
    """Cut a slot whose first ``holds`` bytes are still wanted back to them when it is much bigger."""
    if os.fstat(fd).st_size > max(2 * holds, SLOT_KEEP_BYTES):
        os.ftruncate(fd, holds)


def _new_slots() -> list[int]:
    """Two shared memory files for chunks (module docstring), or none where there is no ``memfd_create``."""
    make = getattr(os, "memfd_create", None)
    if make is None:
        return []
    made: list[int] = []
    try:
        for k in range(2):
            made.append(make(f"flowscope-writer-{k}"))
    except OSError:
        for fd in made:
            os.close(fd)
        return []
    return made


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
        self._slots: list[int] = []  # the shared memory files of this child (module docstring)
        self._writing = False  # a write() is running: slots the child's stop frees are closed by it, not under it
        self._stale: list[int] = []
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
            slots = self._slots = _new_slots()
            with mine, theirs:
                proc = subprocess.Popen([sys.executable, "-c", _CHILD_MAIN, str(theirs.fileno())],
                                        pass_fds=(theirs.fileno(), *slots), stdin=subprocess.DEVNULL,
                                        cwd=os.getcwd(), env={**os.environ, "PYTHONPATH": _import_path()})
                conn = Connection(os.dup(mine.fileno()))
            self._proc, self._conn = proc, conn
            try:
                conn.send((self.url, self.fragments, self.state_max_bytes,
                           logging.getLogger().getEffectiveLevel(), slots))
                if not conn.poll(self.start_timeout_s):
                    self._stop_child()  # else the next write would read its late "ready" as an answer
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
        """Write one batch in the child, in chunks (module docstring): the :class:`WriteResult` of all of it
        (``left`` counts the items not written, ``error`` says why), the items not written, to be retried as they
        are, and those that could not be sent (:func:`encode`: poison). Items are left when the database became
        unavailable (no chunk is sent after one it did not take whole) or when the child died (a new one is
        started by the next call); the chunks it answered are written, and are not sent again. Raises
        :class:`WriterDied` only when no child can be started."""
        if not self.alive():
            self.restarts += self._proc is not None
            self.start()
        self._writing = True
        try:
            return self._write(items)
        finally:
            self._writing = False
            stale, self._stale = self._stale, []
            for fd in stale:
                os.close(fd)

    def _write(self, items: list[Any]) -> tuple[WriteResult, list[Any], list[tuple[Any, BaseException]]]:
        conn, proc, slots = self._conn, self._proc, self._slots  # once: close() may clear them meanwhile
        if conn is None or proc is None:
            return WriteResult(left=len(items), error="the run store's writer process is closed"), list(items), []
        total = WriteResult()
        left: list[Any] = []
        refused: list[tuple[Any, BaseException]] = []
        unreadable: list[list[Any]] = []  # chunks the child could not unpickle: split until the culprit stands alone
        most = 2 if slots else 1  # chunks handed to the child and not yet answered, at most
        in_flight: deque[list[Any]] = deque()  # their items, oldest first
        encoded: list[Any] = []  # the items of the chunk encoded and not yet sent
        rest = 0  # where the items not yet encoded start
        sent = 0  # chunks sent: chunk k goes through slot k % 2
        try:
            while rest < len(items):
                data, encoded, bad = encode(items[rest:rest + CHUNK_ITEMS])  # while the child writes
                rest += CHUNK_ITEMS
                refused += bad
                if len(in_flight) == most:  # the oldest must be answered first: its slot is the one to use
                    if self._answer(conn, proc, in_flight[0], total, left, refused, unreadable):
                        in_flight.popleft()
                        break  # the database is unavailable: what is encoded and the rest are kept for the retry
                    in_flight.popleft()
                self._send(conn, slots, data, sent % 2)
                sent += 1
                in_flight.append(encoded)
                encoded = []
            while in_flight:  # every chunk sent is answered, even after an outage: the next batch must not read it
                self._answer(conn, proc, in_flight[0], total, left, refused, unreadable)
                in_flight.popleft()
            while unreadable:  # rare: halves, one at a time, through slot 0 (nothing else is in flight now)
                part = unreadable.pop()
                data, in_flight_part, bad = encode(part)
                refused += bad
                if not in_flight_part:
                    continue
                in_flight.append(in_flight_part)
                self._send(conn, slots, data, 0)
                outage = self._answer(conn, proc, in_flight_part, total, left, refused, unreadable)
                in_flight.popleft()
                if outage:
                    break
        except WriterDied as e:
            total.error = str(e)
        except BaseException:
            if in_flight:  # its answers would be read as the next batch's: this child goes, its chunks are retried
                self._stop_child(1.0)
            raise
        if slots and sent < 2 and not in_flight:  # a batch of one chunk leaves slot 1 alone: its last chunk is read
            with contextlib.suppress(OSError):
                _trim_slot(slots[1], 0)
        for chunk in (*in_flight, *unreadable):
            left += chunk
        left += encoded
        left += items[rest:]
        total.left = len(left)
        return total, left, refused

    def _send(self, conn: Connection, slots: list[int], data: bytes, slot: int) -> None:
        try:
            if slots:
                _write_slot(slots[slot], data)
                conn.send_bytes(_SLOT_TAG + _SLOT.pack(slot, len(data)))
            else:
                conn.send_bytes(data)
        except OSError as e:  # a closed pipe or slot (close() ran) is a dead child too
            self._died(e)

    def _answer(self, conn: Connection, proc: subprocess.Popen[bytes], sent: list[Any], total: WriteResult,
                left: list[Any], refused: list[tuple[Any, BaseException]], unreadable: list[list[Any]]) -> bool:
        """Wait for the child's answer to the chunk of ``sent`` and fold it into ``total``, ``left`` and ``refused``
        (a chunk the child could not unpickle: its halves into ``unreadable``, or, alone, the item into
        ``refused``); True when the database did not take all of it."""
        try:
            while not conn.poll(1.0):
                if proc.poll() is not None:
                    raise EOFError
            result: WriteResult = conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError) as e:
            self._died(e)
        if result.undecodable is not None:
            if len(sent) == 1:
                refused.append((sent[0], Undecodable(result.undecodable)))
            else:
                mid = len(sent) // 2
                unreadable += (sent[mid:], sent[:mid])
            return False
        for k, n in result.counts.items():
            total.counts[k] = total.counts.get(k, 0) + n
        total.poisoned += result.poisoned
        if result.left:
            total.error = result.error
            left += sent[len(sent) - result.left:]
            return True
        return False

    def _died(self, error: BaseException) -> NoReturn:
        proc = self._proc
        self._stop_child()
        self.restarts += 1
        code = proc.returncode if proc is not None else None
        raise WriterDied(f"the run store's writer process died (exit status {code}): {type(error).__name__}") \
            from error

    def close(self, timeout_s: float = EXIT_TIMEOUT_S) -> None:
        """Close the pipe and wait for the child to exit (it finishes the batch it has); kill it past
        ``timeout_s``."""
        with self._lock:
            self._stop_child(timeout_s)

    def _stop_child(self, timeout_s: float = EXIT_TIMEOUT_S) -> None:
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        slots, self._slots = self._slots, []
        if self._writing:  # the write in progress may still touch them: it closes them when it returns
            self._stale += slots
        else:
            for fd in slots:
                os.close(fd)
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

"""The writer process under faults: closed mid-batch, an exception between chunks, a slow start, an item it
cannot unpickle, names from the app's own str enums, memfds it cannot make."""

from __future__ import annotations

import enum
import os
import threading
import time

import pytest

from exporter import conventions as c
from exporter import worker as worker_module
from exporter.db import make_engine
from exporter.metrics import MetricStore
from exporter.store import RunRecorder, RunStore, process
from exporter.store.process import WriterDied, WriterProcess
from tests.test_writer_process import _count, _span


def _dropped(metrics) -> dict[str, float]:
    reasons = ("shed_runs", "queue_full", "poison", "write_failed", "shutdown", "internal_error")
    return {r: metrics.value(c.RUN_STORE_DROPPED_TOTAL, {"reason": r}) or 0 for r in reasons}


@pytest.mark.parametrize("shared_memory", [True, False], ids=["memfd", "pipe"])
def test_closing_the_recorder_mid_batch_counts_only_what_it_did_not_write(tmp_path, monkeypatch,
                                                                                    shared_memory):
    """RunRecorder.close() closes the writer process even when the worker's shutdown timed out with a batch still
    in WriterProcess.write(). The write in progress must see a dead child (WriterDied: what it had not had answered
    is counted write_failed), not an error of its own that would count the whole batch, stored chunks included,
    as internal_error."""
    monkeypatch.setattr(process, "CHUNK_ITEMS", 10)
    monkeypatch.setattr(worker_module, "ABORT_GRACE_S", 0.2)
    if not shared_memory:
        monkeypatch.setattr(process, "_new_slots", list)
    real_encode = process.encode
    calls: list[int] = []
    third = threading.Event()

    def slow_encode(items):
        calls.append(len(items))
        if len(calls) == 3:  # the writer thread is encoding chunk 3 (a big batch) when the owner closes
            third.set()
            time.sleep(2.0)
        return real_encode(items)

    monkeypatch.setattr(process, "encode", slow_encode)
    url = f"sqlite:///{tmp_path}/w.db"
    metrics = MetricStore()
    store = RunStore(make_engine(url))
    writer = WriterProcess(url, store.redactor.fragments)
    rec = RunRecorder(store, metrics, flush_interval_s=3600, writer=writer).start()
    try:
        now = time.time_ns()
        rec.spans([_span(f"run-{i}", f"{i:016x}", now) for i in range(40)])
        rec.flush(0.05)  # wakes the writer thread: the batch of 40 starts
        assert third.wait(30)
        rec.close(timeout_s=0.1)
        thread = rec.worker._thread
        if thread is not None:
            thread.join(30)
        stored = _count(store, "spans")
        dropped = _dropped(metrics)
        assert dropped["internal_error"] == 0, (stored, dropped)
        # a chunk the child wrote but could not answer (its pipe was closed) is counted write_failed: at least once
        assert stored <= 40 and stored + sum(dropped.values()) >= 40, (stored, dropped)
    finally:
        writer.close()
        store.close()


@pytest.mark.parametrize("shared_memory", [True, False], ids=["memfd", "pipe"])
def test_an_exception_mid_batch_leaves_no_stale_answer_for_the_next_batch(tmp_path, monkeypatch,
                                                                                  shared_memory):
    """Any exception between sending a chunk and reading its answer (here a MemoryError while encoding the next
    chunk) must not leave answers unread for the next write(), which would take them as its own (and, with memfd
    slots, could overwrite a slot the child has not read): the child with chunks in flight is stopped."""
    monkeypatch.setattr(process, "CHUNK_ITEMS", 10)
    if not shared_memory:
        monkeypatch.setattr(process, "_new_slots", list)
    real_encode = process.encode
    calls: list[int] = []

    def failing_encode(items):
        calls.append(len(items))
        if len(calls) == 3:
            raise MemoryError
        return real_encode(items)

    url = f"sqlite:///{tmp_path}/w.db"
    store = RunStore(make_engine(url))
    writer = WriterProcess(url, store.redactor.fragments).start()
    try:
        now = time.time_ns()
        children = [_span("parent-run", f"{i:016x}", now, parent_span_id="f" * 16) for i in range(40)]  # no runs
        monkeypatch.setattr(process, "encode", failing_encode)
        with pytest.raises(MemoryError):
            writer.write(children)
        monkeypatch.setattr(process, "encode", real_encode)
        roots = [_span(f"run-{i}", f"{i:016x}", now) for i in range(5)]
        result, left, refused = writer.write(roots)
        stale = writer._conn is not None and writer._conn.poll(1.0)  # an answer no chunk of this batch waits for
        # (timing decides which symptom shows: the old batch's answer read as this one's, or, with memfd slots,
        # this chunk pwritten over slot 0 before the child read the old chunk 0 there)
        assert (left, refused, result.error) == ([], [], None)
        assert not stale and result.counts.get("runs") == 5  # this batch's answer, and nothing left unread
        assert _count(store, "runs") == 5
    finally:
        writer.close()
        store.close()


def test_new_slots_closes_the_first_memfd_when_the_second_cannot_be_made(monkeypatch):
    """_new_slots() falls back to the pipe when memfd_create fails; a failure on the second slot (EMFILE,
    ENOMEM) must not leak the first descriptor."""
    made: list[int] = []
    real = os.memfd_create

    def second_fails(name, flags=os.MFD_CLOEXEC):
        if made:
            raise OSError(24, "Too many open files")
        fd = real(name, flags)
        made.append(fd)
        return fd

    monkeypatch.setattr(os, "memfd_create", second_fails)
    assert process._new_slots() == []
    leaked = []
    for fd in made:
        try:
            os.fstat(fd)
            leaked.append(fd)
            os.close(fd)
        except OSError:
            pass
    assert not leaked


def test_a_child_slower_to_start_than_start_timeout_is_not_then_used(tmp_path):
    """start() raises WriterDied when the child has not said "ready" within start_timeout_s; that child must not
    be used afterwards (its late ("ready", pid) would be read as a chunk's answer, and every later answer would
    be one chunk late)."""
    url = f"sqlite:///{tmp_path}/w.db"
    store = RunStore(make_engine(url))
    writer = WriterProcess(url, store.redactor.fragments, start_timeout_s=0.01)
    try:
        with pytest.raises(WriterDied):
            writer.start()
        writer.start_timeout_s = 60  # the next write starts a child that has the time it needs
        roots = [_span(f"run-{i}", f"{i:016x}", time.time_ns()) for i in range(5)]
        result, left, refused = writer.write(roots)
        assert (left, refused) == ([], [])
        assert result.counts.get("runs") == 5 and _count(store, "runs") == 5
    finally:
        writer.close()
        store.close()


class _AppLayer(enum.StrEnum):
    """``class Layer(StrEnum)`` in an app's script: the serving process would pickle its members by reference to
    ``__main__``, which the writer process cannot import."""

    API = "api"


class _AppThing:
    """Any other object of a class from the app's ``__main__``."""


for _cls in (_AppLayer, _AppThing):
    _cls.__module__ = "__main__"


def _store_with_writer(tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    store = RunStore(make_engine(url))
    return store, WriterProcess(url, store.redactor.fragments).start()


def _step(root, layer):
    from exporter.sdk.tracer import RunIds

    run = RunIds(root.correlation_id, root.trace_id, "checkout", "svc")
    return (run, layer, "orders", "create", root.start_ns, root.end_ns, "2" * 16, root.span_id)


def test_a_step_named_by_the_apps_own_str_enum_is_stored_with_its_text(tmp_path, monkeypatch):
    """Fast-path steps cross as the app queued them, names and all. A member of a ``str`` enum from the app's
    ``__main__`` used to make its chunk undecodable in the writer process (then the step was refused as poison);
    it now crosses, and is stored, as its text."""
    import sys

    monkeypatch.setattr(sys.modules["__main__"], "_AppLayer", _AppLayer, raising=False)
    store, writer = _store_with_writer(tmp_path)
    try:
        now = time.time_ns()
        root = _span("run-1", "1" * 16, now)
        result, left, refused = writer.write([root, _step(root, _AppLayer.API)])
        assert (left, refused, result.poisoned) == ([], [], [])
        with store.engine.connect() as conn:
            layers = conn.exec_driver_sql("SELECT span_id, layer FROM spans ORDER BY span_id").all()
        assert [tuple(r) for r in layers] == [("1" * 16, root.layer), ("2" * 16, "api")]
    finally:
        writer.close()
        store.close()


def test_an_item_the_child_cannot_unpickle_costs_only_itself(tmp_path, monkeypatch):
    """An item the child cannot unpickle (an object of a class from the app's ``__main__`` where a name should be)
    used to end the child, and every new one the retry started: the store wedged behind it. Its chunk is now
    split until the item stands alone, which is refused as poison; the rest is stored."""
    import sys

    monkeypatch.setattr(sys.modules["__main__"], "_AppThing", _AppThing, raising=False)
    store, writer = _store_with_writer(tmp_path)
    try:
        now = time.time_ns()
        root = _span("run-1", "1" * 16, now)
        step = _step(root, _AppThing())
        result, left, refused = writer.write([root, step])  # before: the child died on it, and on every retry
        assert left == [] and _count(store, "spans") == 1, (result.error, writer.restarts)
        assert [(it, type(e).__name__) for it, e in refused] == [(step, "Undecodable")]
        assert writer.restarts == 0
    finally:
        writer.close()
        store.close()


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the shared memory slots are Linux's memfd")
def test_a_burst_of_big_chunks_does_not_keep_its_shared_memory(tmp_path, monkeypatch):
    """Each chunk crosses through one of two memfds, which grow to the biggest chunk sent. After a burst of spans
    with big states, small chunks cut them back down: the memory is not held for good."""
    monkeypatch.setattr(process, "SLOT_KEEP_BYTES", 1 << 20)
    store, writer = _store_with_writer(tmp_path)
    try:
        now = time.time_ns()
        big = [_span(f"big-{i}", f"{i + 1:016x}", now, state={"blob": f"{i:x}" * 4_000}) for i in range(400)]
        assert writer.write(big)[1:] == ([], [])
        assert max(os.fstat(fd).st_size for fd in writer._slots) > 2 << 20  # the burst's chunk, a few MB
        for k in range(4):  # small batches, one chunk each
            assert writer.write([_span(f"small-{k}", "1" * 16, now)])[1:] == ([], [])
        assert max(os.fstat(fd).st_size for fd in writer._slots) < 1 << 20
        assert _count(store, "spans") == 404
    finally:
        writer.close()
        store.close()


@pytest.mark.skipif(not hasattr(os, "memfd_create"), reason="the shared memory slots are Linux's memfd")
def test_after_a_burst_over_both_slots_small_batches_cut_both_back(tmp_path, monkeypatch):
    """A batch of one chunk only writes slot 0: after a burst of batches of several chunks, quiet traffic used to
    leave slot 1 at the burst's size for good."""
    monkeypatch.setattr(process, "SLOT_KEEP_BYTES", 1 << 20)
    monkeypatch.setattr(process, "CHUNK_ITEMS", 200)
    store, writer = _store_with_writer(tmp_path)
    try:
        now = time.time_ns()
        big = [_span(f"big-{i}", f"{i + 1:016x}", now, state={"blob": f"{i:x}" * 4_000}) for i in range(400)]
        assert writer.write(big)[1:] == ([], [])  # two chunks: both slots a few MB
        assert min(os.fstat(fd).st_size for fd in writer._slots) > 1 << 20
        for k in range(3):
            assert writer.write([_span(f"small-{k}", "1" * 16, now)])[1:] == ([], [])
        assert _count(store, "spans") == 403
        assert max(os.fstat(fd).st_size for fd in writer._slots) < 1 << 20
    finally:
        writer.close()
        store.close()


class _ProxyToStr:
    """Like ``lazy_object_proxy.Proxy``, or a wrapt proxy with ``__reduce__``: it reports its target's class (so
    ``isinstance(p, str)``) and pickles as its target."""

    def __init__(self, text: str):
        self._text = text

    @property
    def __class__(self):
        return str

    def __reduce__(self):
        return str, (self._text,)


def test_a_name_behind_a_proxy_that_claims_to_be_a_str_crosses_as_it_pickles():
    step = ("run", _ProxyToStr("api"), "orders", "create", 1, 2, "2" * 16, "1" * 16)
    data, kept, bad = process.encode([step])
    assert bad == [] and kept == [step]
    assert process.decode(data)[0][1] == "api"


def test_a_sigterm_to_the_process_group_leaves_the_writer_to_its_pipe(tmp_path):
    """A supervisor's SIGTERM (systemd's default KillMode, coreutils' timeout) reaches the writer process too: it
    keeps writing the serving process's last batches, under the same pid, and exits when its pipe closes."""
    import signal

    url = f"sqlite:///{tmp_path}/w.db"
    store = RunStore(make_engine(url))
    writer = WriterProcess(url, store.redactor.fragments).start()
    pid = writer.pid
    assert pid is not None
    try:
        os.kill(pid, signal.SIGTERM)
        result, left, refused = writer.write([_span("run-1", "1" * 16, time.time_ns())])
        assert (left, refused, result.error) == ([], [], None)
        assert (writer.pid, writer.restarts, _count(store, "spans")) == (pid, 0, 1)
    finally:
        writer.close()
        store.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)

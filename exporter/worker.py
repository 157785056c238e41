"""One background sender: a bounded queue drained in batches by a thread its owner starts and stops.

Modelled on opentelemetry-python's ``BatchProcessor`` (``opentelemetry/sdk/_shared_internal``): the
caller's ``submit`` never blocks, a full queue drops and counts, the thread exports a batch when
``max_batch`` items are queued or ``linger_s`` after it took the last one (so an export that took longer
than ``linger_s`` is followed at once by what queued meanwhile: a sender behind never idles waiting for
a full batch), and ``force_flush`` / ``shutdown``
take a deadline and say whether they got there. Unlike it, an export's failures are retried here
through a :class:`~exporter.retry.RetryPolicy` whose backoff ``shutdown`` interrupts, and every item
ends up exported or counted by reason through the owner's ``on_drop(reason, n)``.

Example::

    worker = BatchWorker("flowscope-example", send, on_drop=lambda reason, n: dropped.inc(reason, n),
                         max_queue=10_000, max_batch=500, linger_s=1.0, policy=RetryPolicy(deadline_s=60))
    worker.start()
    worker.submit(item)          # False, and counted as queue_full, when the queue is full
    worker.offer(item)           # the same without the lock, for a hot path (see offer)
    worker.shutdown(timeout_s=10)  # exports what is queued; past the deadline, counts the rest as shutdown

Drop reasons counted by the worker: ``queue_full``, ``shutdown`` (queued or in a backoff when the
deadline passed, or submitted after shutdown), ``retries_exhausted``, ``rejected`` (a
:class:`~exporter.retry.SendError` the policy does not retry) and ``internal_error`` (an export bug).
An export that delivers parts of a batch separately (the Loki pusher splits, the SDK sink posts
profiles apart) calls :meth:`deliver` or :meth:`retry` per part and counts what it drops itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from functools import partial
from typing import Generic, TypeVar

from .retry import DEFAULT_RETRY, RetriesExhausted, RetryInterrupted, RetryPolicy, SendError

__all__ = ["ABORT_GRACE_S", "DEFAULT_RETRY", "BatchWorker", "RetryPolicy"]

log = logging.getLogger("flowscope.worker")

T = TypeVar("T")
R = TypeVar("R")

#: After ``shutdown``'s deadline the backoff in progress is interrupted; an export already on the wire
#: gets this long to return (its own HTTP timeout bounds it) before ``shutdown`` returns without it.
ABORT_GRACE_S = 2.0

QUEUE_POLICIES = ("drop_newest", "drop_oldest")


class BatchWorker(Generic[T]):
    """A bounded queue and the one thread that exports it in batches (see the module docstring).

    ``export(batch)`` sends one batch; when it raises, the batch is retried whole under ``policy``
    (None: not retried, counted). ``queue_policy`` chooses what a full queue drops: the items
    offered (``drop_newest``) or the oldest queued (``drop_oldest``). With ``autostart`` the first
    ``submit`` starts the thread (a library sink that may never be used starts nothing until it is);
    otherwise nothing is exported until :meth:`start`. The thread is a daemon named ``name``, so a
    send stuck past every deadline never holds the interpreter at exit.
    """

    def __init__(self, name: str, export: Callable[[list[T]], None], *,
                 on_drop: Callable[[str, int], None] | None = None, max_queue: int = 10_000,
                 max_batch: int = 500, linger_s: float = 1.0, policy: RetryPolicy | None = DEFAULT_RETRY,
                 queue_policy: str = "drop_newest", autostart: bool = False,
                 on_retry: Callable[[BaseException, int, float], None] | None = None):
        if queue_policy not in QUEUE_POLICIES:
            raise ValueError(f"queue_policy must be one of {', '.join(QUEUE_POLICIES)}, got {queue_policy!r}")
        if max_queue < 1 or max_batch < 1:
            raise ValueError("max_queue and max_batch must be at least 1")
        self.name = name
        self.export = export
        self.policy = policy
        self.max_queue, self.max_batch, self.linger_s = max_queue, max_batch, linger_s
        self.queue_policy = queue_policy
        self.autostart = autostart
        self.on_retry = on_retry
        # For health reports: (wall time, error) of the last failed attempt, and when an export last succeeded.
        self.last_error: tuple[float, BaseException] | None = None
        self.last_ok_at: float | None = None
        # retry() nests (an export that retries its own pushes inside the worker's delivery): a nested call that
        # gave up keeps the outer call's success from counting as one (the batch was dropped, not delivered)
        self._depth = 0
        self._gave_up = False
        self._on_drop = on_drop
        self._queue: deque[T] = deque()
        # offer()'s lock-free appends; moved into _queue (and counted in _queued_total) under the lock
        self._inbox: deque[T] = deque()
        self._exited = False  # the thread took its last look at the queues (set under the lock)
        # What offer() may hold before it takes submit's path: max_queue while open, 0 once shut down and,
        # with autostart, until the thread runs (so that the first offer starts it): one check on the hot path.
        self._room = 0 if autostart else max_queue
        self._wake_at = max_batch - 1  # offer() wakes the thread when the item it adds makes a full batch
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False  # no more submits; the thread exports what is queued, then returns
        self._abort = threading.Event()  # past the shutdown deadline: stop retrying, count the rest
        # Items ever queued, and items settled (exported, or dropped after being queued): a flush waits
        # until everything queued before it is settled, whatever producers add meanwhile.
        self._queued_total = 0
        self._settled_total = 0
        self._flush_upto = 0  # while settled < this, the thread does not linger

    # -- the owner's side -----------------------------------------------------------------------------

    def start(self) -> BatchWorker[T]:
        """Start the thread (once; a no-op when it is running or the worker was shut down)."""
        with self._cv:
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._room = self.max_queue
                self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def stopping(self) -> threading.Event:
        """Set once ``shutdown``'s deadline has passed: an export's own waits should end when it is."""
        return self._abort

    def alive(self) -> bool:
        """Whether the thread is running."""
        t = self._thread
        return t is not None and t.is_alive()

    def force_flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued before this call is exported or counted; False at the deadline."""
        end = time.monotonic() + timeout_s
        with self._cv:
            self._absorb()
            target = self._queued_total
            if self._settled_total >= target:
                return True
            if self._thread is None and not self._closing:
                return False  # nobody drains this queue yet
            self._flush_upto = max(self._flush_upto, target)
            self._cv.notify_all()
            while self._settled_total < target:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def shutdown(self, timeout_s: float = 10.0, wait: bool = True) -> bool:
        """Refuse new items, export what is queued, stop the thread; True if it all got out in time.

        By ``timeout_s`` the thread should have exported the queue and returned. If not, the
        backoff in progress is interrupted, what is still queued or being retried is counted as
        ``shutdown``, and the thread gets :data:`ABORT_GRACE_S` to return. Idempotent. With
        ``wait=False`` it only refuses new items and lets the thread drain, returning at once (an
        owner stopping several workers starts them all draining, then waits on each).
        """
        end = time.monotonic() + max(0.0, timeout_s)
        with self._cv:
            self._closing = True
            self._room = 0
            self._absorb()
            self._flush_upto = self._queued_total
            self._cv.notify_all()
            thread = self._thread
        if not wait:
            return not self._queue and not self._inbox and (thread is None or not thread.is_alive())
        finished = True
        if thread is not None:
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                finished = False
                self._abort.set()
                with self._cv:
                    self._cv.notify_all()
                thread.join(ABORT_GRACE_S)
                if thread.is_alive():
                    log.error("%s: an export is still running past the shutdown deadline; leaving it", self.name)
        left = self._clear()
        if left:
            finished = False
            self._drop("shutdown", left)
            log.error("%s shutting down: %d items not exported", self.name, left)
        return finished

    # -- producers (any thread) -----------------------------------------------------------------------

    def submit(self, item: T) -> bool:
        """Queue one item; False if it was dropped (full queue, or shut down). Never blocks on I/O."""
        q = self._queue
        with self._cv:  # the hot path (one traced step, one log line): append, and wake the thread at a full batch
            if self._inbox:
                self._absorb()
            queued = not self._closing and len(q) < self.max_queue
            if queued:
                q.append(item)
                self._queued_total += 1
                if len(q) == self.max_batch:
                    self._cv.notify_all()
        if not queued:  # full or shut down: the general path drops (or makes room) and counts
            return self.submit_many((item,)) == 1
        if self.autostart and self._thread is None:
            self.start()
        return True

    def submit_many(self, items: Iterable[T]) -> int:
        """Queue items; returns how many of them were queued.

        Under ``drop_oldest`` a full queue makes room by dropping its oldest items, so every item
        offered is queued (the last ``max_queue`` of them, if more are offered at once).
        """
        items = items if isinstance(items, (list, tuple)) else list(items)
        if not items:
            return 0
        q, cap = self._queue, self.max_queue
        with self._cv:
            if self._inbox:
                self._absorb()
            if self._closing:
                taken, lost = 0, len(items)
                reason = "shutdown"
            elif self.queue_policy == "drop_oldest":
                before = len(q)
                q.extend(items)
                over = max(0, len(q) - cap)
                for _ in range(over):
                    q.popleft()
                taken = len(items) - max(0, over - before)
                lost, reason = over, "queue_full"
                self._queued_total += len(items)
                self._settled_total += over  # dropped from the front: settled, for force_flush
            else:
                taken = max(0, min(len(items), cap - len(q)))
                q.extend(items if taken == len(items) else items[:taken])
                lost, reason = len(items) - taken, "queue_full"
                self._queued_total += taken
            if len(q) >= self.max_batch and len(q) - taken < self.max_batch:  # crossed: the thread may be lingering
                self._cv.notify_all()
            start = self.autostart and self._thread is None and not self._closing
        if lost:
            self._drop(reason, lost)
        if start:
            self.start()
        return taken

    def offer(self, item: T) -> int:
        """:meth:`submit` without the lock, for a hot path that must cost tens of nanoseconds (a traced step).

        The item is appended to an inbox (``deque.append`` is atomic under the GIL) that the thread moves
        into the queue when it looks (at a full batch, or every ``linger_s``), as do ``submit``,
        ``force_flush`` and ``shutdown``. Bounded like ``submit``: with the queue full, or once shut down,
        it takes ``submit``'s path, which drops (or makes room) and counts. The bound is checked without
        the lock, so producers racing at the bound may overshoot ``max_queue`` by one item each. An item
        offered while ``shutdown`` finishes is still exported or counted as ``shutdown``.

        Returns how many items wait, this one included (what :meth:`queued` would say), or 0 if it was
        dropped: an owner that sheds load by its queue's level reads it here without another call.
        """
        inbox = self._inbox
        n = len(inbox) + len(self._queue)
        if n >= self._room:  # full, shut down, or not started yet under autostart: submit drops, counts or starts
            return len(inbox) + len(self._queue) if self.submit(item) else 0
        inbox.append(item)
        if self._closing:  # shutdown began since the check above: the item must not be left uncounted
            self._settle_late()
        elif n == self._wake_at:  # this item makes a full batch: wake the thread (once, not per item)
            with self._cv:
                self._cv.notify_all()
        return n + 1

    def queued(self) -> int:
        """Items waiting in the queue (not counting a batch being exported)."""
        return len(self._queue) + len(self._inbox)

    # -- the export side ------------------------------------------------------------------------------

    def retry(self, fn: Callable[[], R], *, started: float | None = None,
              wait: Callable[[float, BaseException], bool] | None = None,
              on_retry: Callable[[BaseException, int, float], None] | None = None) -> R:
        """``fn()`` under this worker's policy, its backoff interrupted by ``shutdown``'s deadline.

        Raises what :meth:`RetryPolicy.call` raises. ``wait`` may replace the backoff wait; it must
        return False once :attr:`stopping` is set.
        """
        policy = self.policy or RetryPolicy(max_attempts=1)
        told = on_retry or self.on_retry

        def note(error: BaseException, n: int, delay: float) -> None:
            self.last_error = (time.time(), error)
            if told is not None:
                told(error, n, delay)

        if self._depth == 0:
            self._gave_up = False
        self._depth += 1
        try:
            result = policy.call(fn, interrupt=self._abort, wait=wait, started=started, on_retry=note)
        except Exception as e:
            self.last_error = (time.time(), getattr(e, "last", None) or e)
            self._gave_up = True
            raise
        finally:
            self._depth -= 1
        if not self._gave_up:
            self.last_ok_at = time.time()
        return result

    def deliver(self, fn: Callable[[], object], n: int, *, started: float | None = None,
                wait: Callable[[float, BaseException], bool] | None = None,
                on_retry: Callable[[BaseException, int, float], None] | None = None) -> bool:
        """``fn()`` under the policy (the keywords are :meth:`retry`'s); True once it succeeded, else False with
        its ``n`` items counted by reason (``retries_exhausted``, ``rejected``, ``shutdown`` or ``internal_error``)."""
        try:
            self.retry(fn, started=started, wait=wait, on_retry=on_retry)
            return True
        except RetryInterrupted:
            self._drop("shutdown", n)
        except RetriesExhausted as e:
            self._drop("retries_exhausted", n)
            log.error("%s: giving up on %d items after %d attempts: %s", self.name, n, e.attempts, e.last)
        except SendError as e:
            self._drop("rejected", n)
            log.error("%s: %d items refused (not retried): %s", self.name, n, e)
        except Exception:  # an export bug costs its batch, never the thread
            self._drop("internal_error", n)
            log.exception("%s: unexpected error exporting %d items", self.name, n)
        return False

    def _drop(self, reason: str, n: int) -> None:
        if n and self._on_drop is not None:
            try:
                self._on_drop(reason, n)
            except Exception:  # a failing counter must not take the sender down
                log.exception("%s: counting %d dropped items failed", self.name, n)

    def _absorb(self) -> None:
        """Move what ``offer`` appended into the queue, oldest first (the caller holds the lock)."""
        inbox, q = self._inbox, self._queue
        n = len(inbox)  # items offered from now on wait for the next look
        for _ in range(n):
            q.append(inbox.popleft())
        self._queued_total += n

    def _settle_late(self) -> None:
        """An item was offered while ``shutdown`` ran: once nothing will export it any more, count it."""
        with self._cv:
            if not (self._thread is None or self._exited) or not self._inbox:
                return  # the thread still takes what is queued, or the item was taken already
            n = len(self._inbox)
            self._inbox.clear()
        self._drop("shutdown", n)

    def _clear(self) -> int:
        with self._cv:
            self._absorb()
            n = len(self._queue)
            self._queue.clear()
            self._settled_total += n
            self._cv.notify_all()
        return n

    def _run(self) -> None:
        cv, q = self._cv, self._queue
        taken_at = time.monotonic()  # when the last batch was taken (or the queue last found empty)
        while True:
            with cv:
                deadline = taken_at + self.linger_s
                while True:
                    if self._inbox:
                        self._absorb()
                    if (self._closing or len(q) >= self.max_batch or self._settled_total < self._flush_upto
                            or self._abort.is_set()):
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    cv.wait(left)
                if self._abort.is_set():
                    break
                taken_at = time.monotonic()
                if not q:
                    if self._closing:
                        self._exited = True
                        return
                    continue
                n = min(self.max_batch, len(q))
                batch = [q.popleft() for _ in range(n)]
            try:
                self.deliver(partial(self.export, batch), n)
            finally:
                with cv:
                    self._settled_total += n
                    cv.notify_all()
        with cv:
            self._exited = True
        left = self._clear()
        if left:
            self._drop("shutdown", left)
            log.error("%s shutting down: %d items not exported", self.name, left)

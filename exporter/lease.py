"""Leader leases: work that must happen once across replicas (the retention sweep, scheduled detection) happens
on the one replica that holds its duty's lease.

Replicas of ``flowscope serve`` may share one PostgreSQL store. Each duty is a PostgreSQL *session* advisory lock
(``pg_try_advisory_lock``) taken on a connection of its own that the holder keeps open: while that session lives
the lock is this process's, and when the process dies or its connection breaks, PostgreSQL releases it and
another replica takes it at its next attempt (failover). Use it when a piece of scheduled work must run once
across replicas::

    leases = Leases(engine, retry_s=5.0, metrics=store)
    sweep = leases.lease(c.DUTY_RETENTION_SWEEP)   # registers the duty; no I/O, no thread
    leases.start()                                 # first attempt now, then a keeper thread
    ...
    if sweep.confirm():                            # a SELECT 1 on the lock's connection, right before acting
        recorder.sweep_if_due()
    ...
    leases.stop(timeout_s)                         # unlocks, closes the connection, joins the thread

**Keys.** A duty's lock key is deterministic, the same in every replica and every release: the first 8 bytes of
SHA-256 of ``"flowscope:" + duty``, read as a signed big-endian 64-bit integer (:func:`lock_key`);
``pg_locks`` shows it as ``classid`` (high 32 bits) and ``objid`` (low 32 bits) with ``objsubid = 1``. Advisory
locks are per database, so replicas coordinate exactly when they share the database.

**Timing.** A replica that does not hold a duty tries again every ``retry_s`` (``FLOWSCOPE_LEASE_RETRY_S``); a
holder checks its connection at the same pace, and :meth:`Lease.confirm` checks it again right before the work,
so a holder whose connection broke stops acting at once, not at the next round. A holder that lost its lease
waits three intervals (:data:`LOST_HOLD_OFF`) before it tries again, so the replicas whose connections did not
break have first claim.

**SQLite.** One process owns a SQLite file, so on SQLite (and any store other than PostgreSQL) every lease is
held from the moment it is registered: no connection, no thread.

All of one process's leases share one dedicated connection (outside the engine's pool), in autocommit, with
TCP keepalives and ``tcp_user_timeout`` so a silent network fails a check in seconds rather than the kernel's
minutes; ``application_name`` is ``flowscope-lease`` in ``pg_stat_activity``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from . import conventions as c
from .db import CONNECT_TIMEOUT_S, first_line
from .metrics import MetricStore

log = logging.getLogger("flowscope.lease")

#: Seconds between attempts to take a lease this process does not hold, and between checks of one it holds.
DEFAULT_RETRY_S = 5.0
#: ``application_name`` of the lease connection, as ``pg_stat_activity`` shows it.
APPLICATION_NAME = "flowscope-lease"
#: Retry intervals a holder whose connection broke waits before it tries again: the replicas whose connections
#: did not break (each trying once an interval) take the duty first.
LOST_HOLD_OFF = 3


def lock_key(duty: str) -> int:
    """The advisory lock key of ``duty``: SHA-256 of ``flowscope:<duty>``, its first 8 bytes as a signed 64-bit
    integer (PostgreSQL's ``bigint``). The same in every process, so every replica contends for the same lock.

        lock_key("retention-sweep")   # an int in [-2**63, 2**63)
    """
    return int.from_bytes(hashlib.sha256(b"flowscope:" + duty.encode()).digest()[:8], "big", signed=True)


def _iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


class Lease:
    """One duty's lease in this process; made by :meth:`Leases.lease`. Read :attr:`held` for a look without I/O,
    call :meth:`confirm` right before doing the duty's work."""

    def __init__(self, owner: Leases, duty: str):
        self.duty = duty
        self.key = lock_key(duty)
        self._owner = owner
        #: True while this process holds the lock (as of the last check).
        self.held = False
        #: Wall time the lock was taken, while held.
        self.since: float | None = None
        #: Times this process tried to take the lock, took it, and lost it (its connection broke).
        self.attempts = 0
        self.taken = 0
        self.lost = 0

    def confirm(self) -> bool:
        """Whether this process holds the lease now: False at once if it does not; if it does, a ``SELECT 1`` on
        the lock's connection proves the session (and so the lock) is still there. A broken connection makes
        every lease on it lost, here and now. Always True on SQLite."""
        return self._owner._confirm(self)

    def health(self) -> dict[str, Any]:
        return {"held": self.held, "since": _iso(self.since), "lock_key": self.key, "taken": self.taken,
                "lost": self.lost}


class Leases:
    """This process's leases on one store: one dedicated connection holding the advisory locks, one keeper thread
    (``flowscope-leases``) that retries what is not held and checks what is. The constructor does no I/O and
    starts no thread; whoever calls :meth:`start` calls :meth:`stop`."""

    def __init__(self, engine: Engine, retry_s: float = DEFAULT_RETRY_S, metrics: MetricStore | None = None,
                 clock: Callable[[], float] = time.time):
        self.engine = engine
        self.retry_s = retry_s
        self.clock = clock
        #: On PostgreSQL leases are advisory locks; anywhere else one process owns the store and holds them all.
        self.exclusive = engine.dialect.name != "postgresql"
        self.leases: dict[str, Lease] = {}
        self._lock = threading.Lock()  # the connection and every lease's state
        self._register = threading.Lock()  # lease(): never waits on the keeper's connect
        self._conn: Connection | None = None
        self._lock_engine: Engine | None = None
        #: The lease connection's server process id (``pg_backend_pid()``), while connected.
        self.backend_pid: int | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._hold_off_until = 0.0  # monotonic: no attempt before this, after a loss
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics = metrics
        self._gauge = None
        if metrics is not None:
            self._gauge = metrics.gauge(c.LEASE_HELD, "1 while this process holds the duty's lease (a PostgreSQL "
                                        "advisory lock; always 1 on SQLite): the duty's work runs here.", (c.L_DUTY,))

    def lease(self, duty: str) -> Lease:
        """The lease of ``duty`` (registered once, then the same object). On SQLite it is held from now; on
        PostgreSQL the keeper takes it when it can (at once when it is running)."""
        with self._register:
            lease = self.leases.get(duty)
            if lease is not None:
                return lease
            lease = self.leases[duty] = Lease(self, duty)
            if self.exclusive:
                lease.held, lease.since, lease.taken = True, self.clock(), 1
        if self._metrics is not None and self._gauge is not None:
            with self._metrics.lock:  # a scrape may be rendering the family now
                self._gauge.set_function((duty,), lambda: 1.0 if lease.held else 0.0)
        self._wake.set()  # a running keeper tries it now, not a retry interval later
        return lease

    def _all(self) -> list[Lease]:
        return list(self.leases.values())  # a snapshot: lease() may register one meanwhile

    # -- the owner's side ----------------------------------------------------------------------------

    def start(self) -> Leases:
        """Try every lease once now, then start the keeper thread (once). Nothing to start on SQLite."""
        if self.exclusive or self._thread is not None or self._stop.is_set():
            return self
        self.check()
        self._thread = threading.Thread(target=self._run, name="flowscope-leases", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the keeper, unlock every lease and close the connection, so another replica takes the duties at
        its next attempt. True if the keeper ended within ``timeout_s``. Idempotent."""
        end = time.monotonic() + timeout_s
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():  # stuck in a connect: it releases what it holds itself once that returns
                log.warning("the lease keeper did not stop within the deadline; it releases its leases when its "
                            "connection attempt ends")
                return False
        self._release()
        return True

    def _release(self) -> None:
        """Unlock every lease and close the connection (PostgreSQL would release a closed session's locks anyway)."""
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.exec_driver_sql("SELECT pg_advisory_unlock_all()")
                except Exception as e:  # noqa: BLE001 - closing the session releases them anyway
                    log.debug("unlocking the leases failed: %s", first_line(e))
            self._drop_connection()
            if not self.exclusive:
                for lease in self._all():
                    if lease.held:
                        log.info("released the %s lease", lease.duty)
                    lease.held, lease.since = False, None
            if self._lock_engine is not None:
                self._lock_engine.dispose()
                self._lock_engine = None

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(self.retry_s)
                self._wake.clear()
                if self._stop.is_set():
                    return
                self.check()
        finally:
            if self._stop.is_set():
                self._release()

    # -- one round: what the keeper does every retry_s -------------------------------------------------

    def check(self) -> None:
        """Check the leases held (``SELECT 1``: a broken connection loses them all), then try to take the ones
        not held (``pg_try_advisory_lock``). Never raises: a failure is logged and shown in :meth:`health`."""
        if self.exclusive:
            return
        with self._lock:
            if self._stop.is_set():
                return
            if any(lease.held for lease in self._all()) and not self._alive():
                return  # lost them all; the hold-off keeps this round from taking them straight back
            wanted = [lease for lease in self._all() if not lease.held]
            if not wanted or time.monotonic() < self._hold_off_until:
                return
            try:
                conn = self._connection()
                for lease in wanted:
                    lease.attempts += 1
                    if conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": lease.key}).scalar():
                        lease.held, lease.since = True, self.clock()
                        lease.taken += 1
                        log.info("took the %s lease (advisory lock %d, server pid %s): its work runs here",
                                 lease.duty, lease.key, self.backend_pid)
            except Exception as e:  # noqa: BLE001 - the store is down or refuses: try again next round
                self._failed(e)

    def _confirm(self, lease: Lease) -> bool:
        if self.exclusive:
            return True
        if not lease.held:
            return False
        with self._lock:
            return lease.held and self._alive()

    def _alive(self) -> bool:
        """``SELECT 1`` on the lease connection (the lock held); on failure every lease on it is lost."""
        if self._conn is None:
            return False
        try:
            self._conn.exec_driver_sql("SELECT 1").scalar()
            return True
        except Exception as e:  # noqa: BLE001 - any failure means the session, and its locks, may be gone
            self._failed(e)
            return False

    def _failed(self, error: BaseException) -> None:
        """The connection failed: whatever it held is lost (PostgreSQL releases a dead session's locks)."""
        repeated = first_line(error) == self.last_error
        self.last_error, self.last_error_at = first_line(error), self.clock()
        lost = [lease for lease in self._all() if lease.held]
        for lease in lost:
            lease.held, lease.since = False, None
            lease.lost += 1
        if lost:
            wait = LOST_HOLD_OFF * self.retry_s
            self._hold_off_until = time.monotonic() + wait
            log.warning("lost the %s lease%s (the lease connection failed: %s); another replica takes over, this one "
                        "tries again in %g s", ", ".join(lease.duty for lease in lost), "s" if len(lost) > 1 else "",
                        self.last_error, wait)
        elif not repeated:  # a replica that cannot connect never takes a duty: say why, once per distinct error
            log.warning("cannot reach the store for the leases (%s): retrying every %g s", self.last_error,
                        self.retry_s)
        self._drop_connection()

    def _connection(self) -> Connection:
        if self._conn is None:
            if self._lock_engine is None:
                self._lock_engine = create_engine(self.engine.url, poolclass=NullPool,
                                                  connect_args=self._connect_args())
            conn = self._lock_engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                self.backend_pid = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _connect_args(self) -> dict[str, Any]:
        """libpq settings for the lease connection, unless the URL sets them: a connect timeout, and keepalives
        with a TCP user timeout so a check on a silent network fails within a few retry intervals."""
        query = set(self.engine.url.query)
        bound_s = max(5, round(2 * self.retry_s))
        wanted = {"connect_timeout": CONNECT_TIMEOUT_S, "application_name": APPLICATION_NAME, "keepalives": 1,
                  "keepalives_idle": max(1, round(self.retry_s)), "keepalives_interval": 1,
                  "keepalives_count": 3, "tcp_user_timeout": bound_s * 1000}
        return {k: v for k, v in wanted.items() if k not in query}

    def _drop_connection(self) -> None:
        conn, self._conn, self.backend_pid = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - it is broken already
                conn.invalidate()

    # -- what /api/v1/health shows ----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Each lease (held here or not, since when, its lock key) and the lease connection. Takes no lock and does
        no I/O (a keeper waiting on a connect must not hold up a health check): the state as of the last check."""
        duties = {duty: lease.health() for duty, lease in sorted(self.leases.items())}
        return {"mode": "single_process" if self.exclusive else "advisory_lock", "retry_s": self.retry_s,
                "backend_pid": self.backend_pid, "last_error": self.last_error,
                "last_error_at": _iso(self.last_error_at), "duties": duties}

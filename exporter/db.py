"""One SQLAlchemy engine per database URL: SQLite by default, PostgreSQL by URL.

Use :func:`make_engine` for every store (runs, errors, alerts, regressions), so
SQLite gets the pragmas that let a writer thread and request threads share one
file, and a bare ``postgresql://`` URL uses psycopg 3, the driver Flowscope ships.

    engine = make_engine("sqlite:///var/flowscope.db")
    engine = make_engine("postgresql://flowscope@127.0.0.1:5432/flowscope")

``flowscope serve`` then waits for the store (:func:`wait_for_store`: retried with backoff, one log line per
attempt, one line past its deadline); health and readiness ask :func:`probe`. A SQLite path this user
cannot write is a :class:`StoreUnavailable` from :func:`make_engine`, naming the path and what to do.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from sqlalchemy import Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from .errors import ConfigError, FlowscopeError
from .redact import mask_url
from .retry import RetriesExhausted, RetryInterrupted, RetryPolicy

log = logging.getLogger("flowscope.store")

#: Seconds libpq waits for one connection to PostgreSQL (unless the URL sets ``connect_timeout``): a host that
#: drops packets fails one attempt in this time instead of the kernel's minutes.
CONNECT_TIMEOUT_S = 10

#: How ``flowscope serve`` retries a store it cannot reach at start-up; the deadline is the
#: ``store_connect_timeout_s`` setting.
STARTUP_RETRY = RetryPolicy(initial_backoff_s=0.5, max_backoff_s=5.0, multiplier=2.0, jitter=0.2)

#: What a PostgreSQL server says when it is up but not accepting connections yet (or for a moment): retried.
#: Any other ``FATAL`` at connect (no such role or database, authentication failed) is final at once.
_PG_TRANSIENT = ("starting up", "shutting down", "recovery", "too many", "not yet accepting", "remaining connection")


class StoreUnavailable(FlowscopeError):
    """The store cannot be used: unreachable past the start-up deadline, refused for good, or a SQLite path
    this user cannot write. The message is one line that names the store and says what to do."""


def first_line(error: BaseException) -> str:
    """The driver's message, first line only, URL passwords masked: what a one-line log or exit message shows.

    SQLAlchemy's own text adds the statement and a link; psycopg's adds a hint on a second line."""
    inner = getattr(error, "orig", None) or error
    try:
        text = str(inner)
    except Exception:  # noqa: BLE001 - an error that cannot be shown is still an error
        text = ""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "") or type(inner).__name__
    return mask_url(line) or line


def sqlite_path(url: str) -> str | None:
    """The absolute path of a SQLite URL's file; None for another database or an in-memory one."""
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return None
    try:
        database = make_url(url).database
    except Exception:  # noqa: BLE001 - malformed: create_engine names the problem
        return None
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return os.path.abspath(database)


def check_sqlite_path(path: str) -> None:
    """Make the SQLite file's directory if it is missing; raise :class:`StoreUnavailable`, one line naming the
    path and what to do, when this user cannot create or write the file (SQLite also writes ``-wal`` and
    ``-shm`` files beside it, so the directory must be writable too)."""
    directory = os.path.dirname(path) or "."
    uid = os.geteuid() if hasattr(os, "geteuid") else None
    who = f"this user (uid {uid})" if uid is not None else "this user"
    todo = "or set FLOWSCOPE_DATABASE_URL to a writable path"
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise StoreUnavailable(f"cannot use the SQLite store {path}: {directory} is not a directory; {todo}")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise StoreUnavailable(f"cannot create the directory {directory} for the SQLite store {path}: "
                               f"{e.strerror or e}; create it writable by {who}, {todo}") from None
    if os.path.isdir(path):
        raise StoreUnavailable(f"cannot use the SQLite store {path}: it is a directory; {todo}")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise StoreUnavailable(f"the SQLite store {path} is not writable by {who}: make it writable (chown or "
                               f"chmod), {todo}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StoreUnavailable(f"the directory {directory} of the SQLite store {path} is not writable by {who} "
                               f"(SQLite writes the file and its -wal beside it): make it writable, {todo}")


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 (SQLAlchemy would otherwise look for psycopg2)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


#: SQLite settings of the run store's bulk writer (``make_engine(..., bulk_writer=True)``), each measured on 750,000
#: OTLP spans written in batches of 5,000 (the writer's CPU per span, and its wall time): a 64 MB page cache (the
#: default is 2 MB: with millions of spans the index inserts land on pages all over the file, and each page missing
#: from the cache is a read from the OS), 24 against 21 µs at 1.5 million spans; and its own checkpoints only past
#: 50,000 WAL pages (200 MB; the default is 1,000): the writer process checkpoints from a thread of its own
#: (:func:`exporter.store.process.checkpoint_in_background`), so a commit no longer waits for the copy and its
#: fsync (at the store's pace they were an eighth of the writer's time), and this is the bound if that thread lags.
BULK_WRITER_PRAGMAS = ("PRAGMA cache_size=-65536", "PRAGMA wal_autocheckpoint=50000")


def make_engine(url: str, bulk_writer: bool = False) -> Engine:
    """An engine on ``url``; for SQLite the file's directory is made first, and a path this user cannot write
    is a :class:`StoreUnavailable` naming it (no connection is opened here). ``bulk_writer``: the run store's
    writer process, whose SQLite connections get :data:`BULK_WRITER_PRAGMAS`."""
    url = normalize_url(url)
    path = sqlite_path(url)
    if path is not None:
        check_sqlite_path(path)
    connect_args = {}
    if url.startswith("postgresql+psycopg") and "connect_timeout" not in url:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    try:
        engine = create_engine(url, pool_pre_ping=not url.startswith("sqlite"), connect_args=connect_args)
    except Exception as e:  # noqa: BLE001 - unknown dialect, missing driver, malformed URL
        raise ConfigError(f"database_url: {mask_url(str(e))}") from None  # the message may quote the URL
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _):
            # WAL: readers never block the writer thread; busy_timeout: writers queue, not fail.
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute("PRAGMA busy_timeout=10000")
            dbapi_conn.execute("PRAGMA synchronous=NORMAL")
            dbapi_conn.execute("PRAGMA foreign_keys=ON")
            for pragma in BULK_WRITER_PRAGMAS if bulk_writer else ():
                dbapi_conn.execute(pragma)
    return engine


def insert_ignore(engine: Engine, table):
    """``INSERT ... ON CONFLICT DO NOTHING`` in the engine's dialect: a span delivered twice is stored once."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if engine.dialect.name == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return table.insert()


def probe(engine: Engine) -> str | None:
    """None if the store answers ``SELECT 1`` now, else the error's first line (for health and readiness)."""
    error = probe_error(engine)
    return None if error is None else first_line(error)


def _retryable(engine: Engine, error: BaseException) -> bool:
    """Whether another attempt may connect: the network or a server not ready yet, not a refusal for good."""
    if not isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return False
    if engine.dialect.name == "sqlite":
        return "locked" in first_line(error)  # another process holds the file for a moment; anything else stays
    message = first_line(error)
    return "FATAL" not in message or any(t in message for t in _PG_TRANSIENT)


class _Attempt(Exception):
    def __init__(self, message: str, retryable: bool):
        super().__init__(message)
        self.retryable = retryable  # read by RetryPolicy.retryable


def wait_for_store(engine: Engine, deadline_s: float, *, interrupt: threading.Event | None = None,
                   policy: RetryPolicy = STARTUP_RETRY, clock: Callable[[], float] = time.monotonic) -> int:
    """Block until the store answers ``SELECT 1``; returns the attempts it took.

    An unreachable store (PostgreSQL not up yet, its host not resolvable yet) is retried with
    ``policy``'s backoff for at most ``deadline_s`` seconds, logging one line per failed attempt (the
    masked URL, the error's first line, the next wait). Past the deadline, or at once for an error no
    retry mends (an unknown role or database, a refused password, a SQLite file that is not a
    database), it raises :class:`StoreUnavailable` with one line. When ``interrupt`` is set during a
    wait it raises :class:`StoreUnavailable` too, saying so. Example::

        engine = make_engine(cfg.database_url)
        wait_for_store(engine, cfg.store_connect_timeout_s, interrupt=stopping)
    """
    where = mask_url(engine.url.render_as_string(hide_password=True))
    started = clock()
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        error = probe_error(engine)
        if error is not None:
            raise _Attempt(first_line(error), _retryable(engine, error)) from error

    def on_retry(error: BaseException, n: int, wait: float) -> None:
        left = max(0.0, deadline_s - (clock() - started))
        log.warning("store %s not reachable (attempt %d): %s; retrying in %.1f s (%.1f s of the %g s deadline left)",
                    where, n, error, wait, left, deadline_s)

    try:
        replace(policy, deadline_s=deadline_s).call(attempt, interrupt=interrupt, on_retry=on_retry,
                                                    started=started, clock=clock)
    except RetriesExhausted as e:
        raise StoreUnavailable(f"store {where} not reachable after {e.attempts} attempts in "
                               f"{clock() - started:.1f} s (FLOWSCOPE_STORE_CONNECT_TIMEOUT_S={deadline_s:g}): "
                               f"{e.last}") from None
    except RetryInterrupted as e:
        raise StoreUnavailable(f"stopped while waiting for the store {where}: {e.last}") from None
    except _Attempt as e:
        raise StoreUnavailable(f"store {where}: {e} (not retried: waiting does not mend this)") from None
    if attempts > 1:
        log.info("store %s reachable after %d attempts in %.1f s", where, attempts, clock() - started)
    return attempts


def probe_error(engine: Engine) -> BaseException | None:
    """The exception ``SELECT 1`` raises on ``engine`` now, or None when the store answers."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as e:  # noqa: BLE001 - returned to be judged by the caller
        return e
    return None

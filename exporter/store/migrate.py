"""Bring a database to the schema this release reads and writes, with Alembic, and say where it stands.

**When a store is upgraded.** Every store (:class:`~exporter.store.RunStore`, the backend's alert store,
regression findings) calls :func:`ensure_schema` on its engine when it is made, so ``flowscope serve`` (with or
without ``--demo``) upgrades its database at start; ``flowscope db upgrade`` does the same on demand and
``flowscope db current`` reports the revision. The rule:

- **SQLite**: always upgraded at start.
- **PostgreSQL**: upgraded at start too, inside one transaction that first takes a transaction-level advisory
  lock (``pg_advisory_xact_lock``): replicas starting together upgrade one after the other, and the later ones
  find the database at head and do nothing. PostgreSQL runs DDL in the transaction, so a failed upgrade
  leaves the database as it was.
- **Never downward**: a database at a revision this release does not know (a newer release upgraded it) is
  refused with a :class:`~exporter.errors.ConfigError` naming the revision, not touched.
- **A store from before migrations** (product tables, no ``alembic_version``) is recognised and brought to the
  baseline (revision 0001 creates only the tables it lacks, so it completes what the old ``create_all`` calls
  would have made), then upgraded; an empty database goes from nothing to head the same way.

    from exporter.store.migrate import ensure_schema, status
    ensure_schema(engine)            # once per engine: a no-op when the database is at head
    status(engine).revision          # '0002'
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect

from ..errors import ConfigError
from .schema import metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

log = logging.getLogger("flowscope.store")

#: The revision a store from before migrations is taken to be at, once its missing tables are made.
BASELINE = "0001"
#: This release's head (tests/test_migrations.py checks it against the scripts): a store at head is checked
#: with one query, without importing Alembic (75 ms).
HEAD = "0006"
#: The table where Alembic records the revision.
VERSION_TABLE = "alembic_version"
#: The key of PostgreSQL's advisory lock around an upgrade (any constant; "Flow" in ASCII).
LOCK_KEY = 0x466C6F77
MIGRATIONS = Path(__file__).parent / "migrations"


def config(connection: Connection | None = None, url: str | None = None) -> Config:
    """Alembic's configuration, built in code (no alembic.ini): the migrations shipped in this package, and the
    connection to run them on (or a URL, for a developer running ``alembic`` against a database)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def head() -> str:
    """The revision this release's schema is at."""
    return HEAD


@dataclass(frozen=True, slots=True)
class Status:
    """Where a database stands: its ``revision`` (None: none recorded), this release's ``head``, and whether it
    is a store from before migrations (``legacy``: product tables, no revision) or ``empty``."""

    revision: str | None
    head: str
    legacy: bool
    empty: bool

    @property
    def at_head(self) -> bool:
        return self.revision == self.head

    @property
    def known(self) -> bool:
        """False when a newer release has upgraded the database past what this one knows."""
        return self.revision is None or _known(self.revision)


def _known(revision: str) -> bool:
    if revision == HEAD:
        return True
    try:
        return _script().get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for an unknown id
        return False


def _status(conn: Connection) -> Status:
    have = set(inspect(conn).get_table_names())
    revision = None
    if VERSION_TABLE in have:  # one row: these migrations have no branches
        revision = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalar()
    legacy = empty = False
    if revision is None:
        tables = have & set(metadata.tables)
        legacy, empty = bool(tables), not tables
    return Status(revision, HEAD, legacy, empty)


def status(engine: Engine) -> Status:
    """Where ``engine``'s database stands (reads only)."""
    with engine.connect() as conn:
        return _status(conn)


#: Alembic's ``op`` and ``context`` are process-wide proxies: two upgrades in one process run one at a time.
_alembic_lock = threading.Lock()


def upgrade(engine: Engine) -> tuple[Status, Status]:
    """Upgrade the database to head under the rule above; returns (before, after).

    Raises :class:`~exporter.errors.ConfigError` for a database a newer release has upgraded."""
    with _alembic_lock, engine.connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({LOCK_KEY})")  # released at commit/rollback
        before = _status(conn)
        if not before.known:
            raise ConfigError(f"database_url: the database is at schema revision {before.revision!r}, which "
                              f"this release does not know (its head is {before.head!r}): a newer release "
                              "upgraded it; run that release, or point this one at another database")
        if not before.at_head:
            from alembic import command

            cfg = config(conn)
            if before.legacy:
                log.info("store from before migrations: bringing it to the baseline %s", BASELINE)
                command.upgrade(cfg, BASELINE)
            command.upgrade(cfg, "head")
        after = _status(conn)
    if before.revision != after.revision:
        log.info("store upgraded from %s to %s", before.revision or ("none (legacy)" if before.legacy else "empty"),
                 after.revision)
    return before, after


_done: weakref.WeakSet[Engine] = weakref.WeakSet()
_done_lock = threading.Lock()


def ensure_schema(engine: Engine) -> None:
    """Upgrade ``engine``'s database once per engine (the stores sharing one engine check once): nothing to do
    when it is at head; else :func:`upgrade`."""
    with _done_lock:
        if engine in _done:
            return
        if not status(engine).at_head:
            upgrade(engine)
        _done.add(engine)

"""The database handle: one async engine, read and write transactions, migrations.

SQLite allows one writer at a time. Inside one process we take an asyncio lock around write
transactions, so tasks queue up in memory instead of sleeping in SQLite's busy handler. Write
transactions begin IMMEDIATE; when another process (a CLI command) holds the lock, the BEGIN is
tried again after asynchronous pauses (bot/db/inline_sqlite.py), so the event loop never sleeps
in SQLite. Reads that scan (the dashboard) go through `analytics()`: on SQLite a second engine
whose statements run on a thread, so a long aggregate does not hold up webhooks either; writes
that aggregate (the dashboard's rollups) go through `background_write()`, a thread too, under
the same in-process write lock.
PostgreSQL needs none of this: one engine, no lock. A pooled PostgreSQL connection is not
pinged when taken (three round trips on asyncpg): one the server closed is replaced instead
(`_closed_on_checkout`), and connections are renewed every `POOL_RECYCLE` seconds.

WAL checkpoints: SQLite copies the write-ahead log back into the database file (with an fsync)
inside whichever commit crosses 1,000 pages, which on inline connections is the event loop.
A service runs them on a thread instead (`checkpoints`): its connections never checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from bot.db.inline_sqlite import InlineConnection, inline_creator

log = logging.getLogger(__name__)
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


#: seconds between the background WAL checkpoints of a service (`Database.checkpoints`)
CHECKPOINT_EVERY = 1.0
#: seconds after which a PostgreSQL connection is replaced (one a firewall dropped silently)
POOL_RECYCLE = 600


def _closed_on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled PostgreSQL connection the server closed (a restart, an idle timeout, a
    terminated backend) is replaced when it is taken, without a round trip: the driver saw the
    socket close. (A ping on every checkout costs three round trips on asyncpg.)"""
    driver = getattr(dbapi_connection, "driver_connection", None)
    is_closed = getattr(driver, "is_closed", None)
    if is_closed is not None and is_closed():
        raise DisconnectionError("the server closed this connection")


def _no_autocheckpoint(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, decide where transactions begin (see the "begin" hook).
    dbapi_connection.isolation_level = None
    # Inline connections run on the event loop: they must not sleep in SQLite's busy handler
    # (they wait asynchronously instead); threaded ones may.
    inline = isinstance(getattr(dbapi_connection, "driver_connection", None), InlineConnection)
    cursor = dbapi_connection.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON",
                   f"busy_timeout={0 if inline else 30000}", "temp_store=MEMORY"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=1")
    cursor.close()


def _json_dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:  # e.g. a lone surrogate, which the json module escapes
        return json.dumps(value)


def _sqlite_begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin(conn: Connection) -> None:
    driver = conn.connection.driver_connection
    conn.exec_driver_sql("BEGIN IMMEDIATE" if getattr(driver, "write_intent", False)
                         else "BEGIN")


class Database:
    """Owns the engine. Use `write()` for anything that changes rows, `read()` otherwise."""

    def __init__(self, url: str, *, echo: bool = False,
                 background_checkpoints: bool = False) -> None:
        """`background_checkpoints`: this database's owner runs `checkpoints()` (a service);
        its connections then leave WAL checkpoints to that thread."""
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        # JSON columns (queue payloads, message and conversation meta) are read and written
        # on every message: orjson does both several times faster than the json module.
        kwargs: dict[str, Any] = {"echo": echo, "json_serializer": _json_dumps,
                                  "json_deserializer": orjson.loads}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
            path = make_url(url).database
            if path and path != ":memory:":
                kwargs["async_creator"] = inline_creator(path)
                # Opening a SQLite connection reads the whole schema on its first statement:
                # keep enough of them that a busy moment never opens and closes extra ones.
                kwargs.update(pool_size=32, max_overflow=32)
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_recycle=POOL_RECYCLE)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        path = make_url(url).database if self.is_sqlite else None
        #: the file a background thread checkpoints (None: SQLite's own automatic ones)
        self._checkpoint_path = path if background_checkpoints and path and \
            path != ":memory:" else None
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
            if self._checkpoint_path is not None:
                event.listen(self.engine.sync_engine, "connect", _no_autocheckpoint)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        else:
            event.listen(self.engine.sync_engine, "checkout", _closed_on_checkout)
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        self._threaded: dict[bool, AsyncEngine] = {}  # writes? -> a SQLite engine on threads

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits on success and rolls back on error."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            if isinstance(driver, InlineConnection):
                driver.write_intent = True
            try:
                async with conn.begin():
                    yield conn
            finally:
                if isinstance(driver, InlineConnection):
                    driver.write_intent = False

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """Statements that change nothing. On PostgreSQL they run outside a transaction: each
        statement sees what was committed when it started, as in the READ COMMITTED
        transaction it would otherwise open, without the BEGIN and ROLLBACK round trips."""
        async with self.engine.connect() as conn:
            if not self.is_sqlite:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield conn

    @contextlib.asynccontextmanager
    async def analytics(self) -> AsyncIterator[AsyncConnection]:
        """A read for queries that scan (dashboard panels, reports): on a SQLite file, its
        statements run on a thread, so the event loop keeps serving meanwhile."""
        async with self._threaded_engine(writes=False).connect() as conn:
            yield conn

    @contextlib.asynccontextmanager
    async def background_write(self) -> AsyncIterator[AsyncConnection]:
        """`write()` for transactions that scan (the dashboard's rollups): on a SQLite file its
        statements run on a thread while this process's other writers wait for the write
        lock, so webhooks, pages and reads are served meanwhile."""
        engine = self._threaded_engine(writes=True)
        if engine is self.engine:
            async with self.write() as conn:
                yield conn
            return
        assert self._write_lock is not None
        async with self._write_lock, engine.begin() as conn:
            yield conn

    def _threaded_engine(self, *, writes: bool) -> AsyncEngine:
        if not self.is_sqlite or self.engine.dialect.driver != "aiosqlite" or \
                make_url(self.url).database in (None, "", ":memory:"):
            return self.engine
        engine = self._threaded.get(writes)
        if engine is None:
            engine = self._threaded[writes] = create_async_engine(
                self.url, json_serializer=_json_dumps, json_deserializer=orjson.loads,
                connect_args={"timeout": 30, "check_same_thread": False},
                pool_size=2, max_overflow=2)
            listen = functools.partial(event.listen, engine.sync_engine)
            listen("connect", _sqlite_pragmas)
            if writes:
                if self._checkpoint_path is not None:
                    listen("connect", _no_autocheckpoint)
                listen("begin", _sqlite_begin_immediate)
            else:
                listen("connect", _query_only)
                listen("begin", _sqlite_begin)
        return engine

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def check_writable(self) -> None:
        """Commit a tiny write (this process's own row), so a full disk, a read-only file or a
        read-only replica shows as not ready, which a read cannot tell."""
        key = f"readyz:{socket.gethostname()}:{os.getpid()}"[:200]
        now = datetime.now(UTC)
        async with self.write() as conn:
            await conn.execute(text("DELETE FROM channel_state WHERE key = :key"), {"key": key})
            await conn.execute(text("INSERT INTO channel_state (key, value, updated_at) "
                                    "VALUES (:key, :value, :now)"),
                               {"key": key, "value": '{"probe": true}', "now": now})

    async def upgrade(self, revision: str = "head") -> None:
        """Apply Alembic migrations (the same ones on SQLite and PostgreSQL)."""
        cfg = alembic_config(self.url)

        def run(sync_conn: Connection) -> None:
            if sync_conn.dialect.name == "postgresql":  # processes starting together wait here
                sync_conn.execute(text("SELECT pg_advisory_xact_lock(23863)"))
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, revision)

        async with self.engine.begin() as conn:
            await conn.run_sync(run)

    async def optimize(self) -> None:
        """Refresh the query planner's statistics (SQLite only; PostgreSQL's autovacuum does
        it): without them SQLite may walk a table where an index would do."""
        if not self.is_sqlite:
            return
        async with self.write() as conn:
            await conn.exec_driver_sql("PRAGMA analysis_limit=400")
            await conn.exec_driver_sql("PRAGMA optimize=0x10002")

    async def checkpoints(self, stop: asyncio.Event, *, every: float = CHECKPOINT_EVERY) -> None:
        """Until `stop`: copy the WAL back into the database file on a thread, so no commit
        on the event loop does it (PASSIVE: readers and the writer are never waited for).
        Nothing to do on PostgreSQL or without `background_checkpoints`."""
        path = self._checkpoint_path
        if path is None:
            return
        conn: sqlite3.Connection | None = None
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=every)
                try:
                    conn = await asyncio.to_thread(_checkpoint, path, conn)
                except sqlite3.Error as exc:
                    log.warning("WAL checkpoint failed (%s); trying again", exc)
                    if conn is not None:
                        conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()
            with contextlib.suppress(sqlite3.Error):  # the last one, before the service stops
                (await asyncio.to_thread(_checkpoint, path, None)).close()

    async def current_revision(self) -> str | None:
        async with self.engine.connect() as conn:
            try:
                row = (await conn.execute(text("SELECT version_num FROM alembic_version"))).first()
            except Exception:  # noqa: BLE001 - table missing means "no revision yet"
                return None
            return str(row[0]) if row else None

    async def close(self) -> None:
        for engine in self._threaded.values():
            await engine.dispose()
        await self.engine.dispose()


def _checkpoint(path: str, conn: sqlite3.Connection | None) -> sqlite3.Connection:
    """One PASSIVE checkpoint of the WAL of `path` (on a thread); returns the connection to use
    next time."""
    if conn is None:
        conn = sqlite3.connect(path, timeout=5, check_same_thread=False)
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    return conn


def explain_connect_error(exc: BaseException, url: str) -> str | None:
    """One line saying what is wrong with the database and how to fix it, for the mistakes
    people make (a missing folder, a read-only file, wrong credentials, nothing listening);
    None when it is something else (then the traceback is the useful thing)."""
    parsed = make_url(url)
    message = str(getattr(exc, "orig", None) or exc)
    name = type(getattr(exc, "orig", None) or exc).__name__
    if parsed.drivername.startswith("sqlite"):
        path = Path(parsed.database or "")
        if "unable to open database file" in message:
            if not path.parent.exists():
                return (f"the folder {path.parent} does not exist: create it, or point "
                        "DATABASE_URL at a folder that does")
            return f"cannot open {path}: check that this process may read and write it"
        if "readonly database" in message or "read-only" in message:
            return f"{path} is read-only: let this process write it (and its folder)"
        if "disk" in message and "full" in message:
            return f"the disk holding {path} is full: free some space"
        return None
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    if name in ("InvalidPasswordError", "InvalidAuthorizationSpecificationError"):
        return (f"PostgreSQL at {where} refused user {parsed.username or '?'}: {message}; "
                "check DATABASE_URL")
    if name == "InvalidCatalogNameError":
        return (f"PostgreSQL at {where} has no database {parsed.database!r}: create it "
                f"(createdb {parsed.database}) or fix DATABASE_URL")
    if isinstance(exc, OSError) or name in ("ConnectionRefusedError", "TimeoutError"):
        return f"cannot reach PostgreSQL at {where} ({message}): is it running? check DATABASE_URL"
    return None

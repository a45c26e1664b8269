"""An aiosqlite-compatible connection that runs SQLite calls inline on the event loop.

aiosqlite runs every statement on a helper thread: each call is a thread hop (queue, GIL
hand-over, self-pipe wake-up) that costs far more than the statement itself on a local WAL
database, and a handled customer message needs about ten statements. SQLite calls on a local
file take microseconds (WAL commits with synchronous=NORMAL do not fsync), so running them
inline keeps the loop responsive and makes the embedded default several times faster. Used
through SQLAlchemy's `async_creator` hook, so the rest of the code is unchanged.

Because the loop is the caller, SQLite must never wait for a lock itself: its busy timeout is
zero, and a statement refused because another process holds the write lock (a CLI import) is
tried again after an asynchronous pause, so webhooks and long-polls carry on meanwhile. The
service's write transactions begin IMMEDIATE (`write_intent`), so the only statement that can
meet the lock is the BEGIN, which is always safe to try again.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from typing import Any

#: how long a statement keeps trying while another process holds the lock (then it fails)
PATIENCE = 30.0
_FIRST_PAUSE, _LONGEST_PAUSE = 0.002, 0.02
_SNAPSHOT_BUSY = 517  # SQLITE_BUSY_SNAPSHOT: the transaction must start over, not the statement


def _lock_refused(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) and \
            code != _SNAPSHOT_BUSY
    return "locked" in str(exc)


async def _patiently(call: Callable[[], Any]) -> Any:
    """`call()`, tried again with growing pauses while the database is locked elsewhere."""
    try:
        return call()
    except sqlite3.OperationalError as exc:
        if not _lock_refused(exc):
            raise
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PATIENCE
    pause = _FIRST_PAUSE
    while True:
        await asyncio.sleep(pause)
        try:
            return call()
        except sqlite3.OperationalError as exc:
            if not _lock_refused(exc) or loop.time() >= deadline:
                raise
        pause = min(pause * 2, _LONGEST_PAUSE)


class InlineCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        if parameters is None:
            await _patiently(lambda: self._cursor.execute(sql))
        else:
            await _patiently(lambda: self._cursor.execute(sql, parameters))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        rows = list(parameters)
        await _patiently(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size) if size is not None else self._cursor.fetchmany()

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _ImmediateQueue:
    """SQLAlchemy sets isolation_level by queueing (future, fn) for aiosqlite's thread; run
    it at once instead."""

    @staticmethod
    def put_nowait(item: tuple[Any, Callable[[], Any]]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as exc:  # noqa: BLE001 - handed to the awaiting caller
            future.set_exception(exc)


class InlineConnection:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._tx = _ImmediateQueue()
        #: the next transaction will write: begin it IMMEDIATE (take the write lock first)
        self.write_intent = False

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        cursor = InlineCursor(self._conn.cursor())
        return await cursor.execute(sql, parameters)

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def commit(self) -> None:
        await _patiently(self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()

    def stop(self) -> None:
        self._conn.close()


def inline_creator(path: str) -> Callable[[], Any]:
    """An `async_creator` for create_async_engine that opens `path` inline (busy timeout 0:
    waiting for a lock is done by `_patiently`, off the loop's back)."""

    async def create() -> InlineConnection:
        conn = sqlite3.connect(path, timeout=0, check_same_thread=False)
        return InlineConnection(conn)

    return create

"""Leader election for singletons (mail pollers, the queue sweeper) across worker processes.

Two replicas must never poll the same mailbox. `Leader.run(name, stop, work)` runs `work` only
while this process holds the lock `name`, renewing it every third of its TTL; when renewal
fails the work is told to stop, and another process takes over after the TTL.

- Redis: `SET key token NX PX ttl`, renewed and released with compare-and-set scripts, so a
  process never extends or deletes a lock it no longer owns.
- PostgreSQL without Redis: a session advisory lock on a dedicated connection; if the process
  dies its connection closes and the lock is free at once.
- SQLite: one process by design, so it is always the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)
Work = Callable[[asyncio.Event], Coroutine[Any, Any, None]]

_RENEW = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"""
_RELEASE = """if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1]) else return 0 end"""


class Lease(Protocol):
    async def renew(self) -> bool: ...

    async def release(self) -> None: ...


class Leader:
    """Runs work under a named lock. This base class is the single-process case: no lock."""

    def __init__(self, *, ttl: float = 15.0, retry: float | None = None) -> None:
        self.ttl = ttl
        self.retry = retry if retry is not None else ttl / 3

    async def acquire(self, name: str) -> Lease | None:
        return _NoLease()

    async def close(self) -> None:
        """Release connections."""

    async def run(self, name: str, stop: asyncio.Event, work: Work) -> None:
        """Run `work(inner_stop)` whenever we lead `name`, until `stop` is set or the work
        returns on its own."""
        while not stop.is_set():
            try:
                lease = await self.acquire(name)
            except Exception as exc:  # noqa: BLE001 - backend down: try again later
                log.warning("cannot take the %s lock (%s); retrying", name, type(exc).__name__)
                lease = None
            if lease is None:
                await _wait(stop, self.retry)
                continue
            log.info("this process now runs %s", name)
            if await self._lead(name, lease, stop, work):
                return

    async def _lead(self, name: str, lease: Lease, stop: asyncio.Event, work: Work) -> bool:
        """True when the work finished by itself (nothing left to run)."""
        inner = asyncio.Event()
        task = asyncio.create_task(work(inner), name=f"lead-{name}")
        stopper = asyncio.create_task(stop.wait())
        finished = False
        try:
            while True:
                await asyncio.wait({task, stopper}, timeout=self.ttl / 3,
                                   return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    finished = not stop.is_set()
                    break
                if stop.is_set():
                    break
                try:
                    renewed = await lease.renew()
                except Exception:  # noqa: BLE001 - a failed renewal means we lost it
                    renewed = False
                if not renewed:
                    log.warning("lost the %s lock; stopping it here", name)
                    break
        finally:
            stopper.cancel()
            inner.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), timeout=self.ttl / 3)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            with contextlib.suppress(Exception):
                await lease.release()
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("%s stopped with %r", name, task.exception())
            return False
        return finished


class RedisLeader(Leader):
    def __init__(self, redis_url: str, *, prefix: str = "storedesk", ttl: float = 15.0,
                 retry: float | None = None) -> None:
        super().__init__(ttl=ttl, retry=retry)
        from redis.asyncio import Redis  # only imported when Redis is configured

        self.redis: Redis = Redis.from_url(redis_url, decode_responses=True)
        self.prefix = prefix

    async def acquire(self, name: str) -> Lease | None:
        key, token = f"{self.prefix}:leader:{name}", secrets.token_hex(16)
        if await self.redis.set(key, token, nx=True, px=int(self.ttl * 1000)):
            return _RedisLease(self.redis, key, token, int(self.ttl * 1000))
        return None

    async def holder(self, name: str) -> str | None:
        value = await self.redis.get(f"{self.prefix}:leader:{name}")
        return None if value is None else str(value)

    async def close(self) -> None:
        await self.redis.aclose()


class PostgresLeader(Leader):
    """Session advisory locks, one dedicated connection per held lock."""

    def __init__(self, db: Database, *, ttl: float = 15.0, retry: float | None = None) -> None:
        super().__init__(ttl=ttl, retry=retry)
        self.db = db

    async def acquire(self, name: str) -> Lease | None:
        conn = await self.db.engine.connect()
        try:
            got = (await conn.execute(text("SELECT pg_try_advisory_lock(23862, hashtext(:n))"),
                                      {"n": name})).scalar()
            await conn.commit()
        except BaseException:
            await conn.close()
            raise
        if not got:
            await conn.close()
            return None
        return _PgLease(conn, name)


def make_leader(*, redis_url: str | None, db: Database, prefix: str, ttl: float) -> Leader:
    if redis_url:
        return RedisLeader(redis_url, prefix=prefix, ttl=ttl)
    if not db.is_sqlite:
        return PostgresLeader(db, ttl=ttl)
    return Leader(ttl=ttl)


class _NoLease:
    async def renew(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class _RedisLease:
    def __init__(self, redis: Redis, key: str, token: str, ttl_ms: int) -> None:
        self.redis, self.key, self.token, self.ttl_ms = redis, key, token, ttl_ms

    async def renew(self) -> bool:
        result: Any = await cast(Any, self.redis).eval(_RENEW, 1, self.key, self.token,
                                                       str(self.ttl_ms))
        return bool(result)

    async def release(self) -> None:
        await cast(Any, self.redis).eval(_RELEASE, 1, self.key, self.token)


class _PgLease:
    def __init__(self, conn: AsyncConnection, name: str) -> None:
        self.conn, self.name = conn, name

    async def renew(self) -> bool:
        """The lock lives as long as the connection: check that it is still alive."""
        await self.conn.execute(text("SELECT 1"))
        await self.conn.commit()
        return True

    async def release(self) -> None:
        try:
            await self.conn.execute(text("SELECT pg_advisory_unlock(23862, hashtext(:n))"),
                                    {"n": self.name})
            await self.conn.commit()
        except BaseException:
            await self.conn.invalidate()  # never hand a connection holding the lock to the pool
            raise
        finally:
            await self.conn.close()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)

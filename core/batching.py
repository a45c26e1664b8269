"""Many concurrent lookups of one key each, answered by one read of many keys.

The read twin of the inbox's group commit: when a thousand new visitors open the chat in the
same second, each request asks for its own row, and one `WHERE key IN (...)` per turn of the
event loop answers them all instead of a thousand reads (each its own connection checkout and
transaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: keys per read: an IN list this long stays well inside every database's parameter limit
MOST_KEYS = 500


class GroupRead(Generic[K, V]):
    """`await get(key)`: the value `fetch` finds for `key`, or None when it finds none.

    Lookups made while a read is under way wait for the next one, which takes every key asked
    for by then; a failed read fails exactly the lookups it was made for."""

    def __init__(self, fetch: Callable[[Sequence[K]], Awaitable[Mapping[K, V]]], *,
                 most: int = MOST_KEYS) -> None:
        self._fetch = fetch
        self._most = most
        self._waiting: dict[K, list[asyncio.Future[V | None]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[V | None] = loop.create_future()
        self._waiting.setdefault(key, []).append(future)
        if self._reader is None or self._reader.done():
            self._reader = loop.create_task(self._read())
        return await future

    async def _read(self) -> None:
        await asyncio.sleep(0)  # the lookups of this turn of the loop join the first read
        while self._waiting:
            keys = list(self._waiting)[:self._most]
            batch = {key: self._waiting.pop(key) for key in keys}
            try:
                found = await self._fetch(keys)
            except Exception as exc:  # noqa: BLE001 - handed to the lookups it failed
                for futures in batch.values():
                    for future in futures:
                        if not future.done():
                            future.set_exception(exc)
                continue
            except BaseException:  # cancelled (the service stops): so are its lookups
                for futures in (*batch.values(), *self._waiting.values()):
                    for future in futures:
                        future.cancel()
                raise
            for key, futures in batch.items():
                for future in futures:
                    if not future.done():
                        future.set_result(found.get(key))

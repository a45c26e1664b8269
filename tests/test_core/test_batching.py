"""Concurrent lookups share reads, and a failed read fails only the lookups it served."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from core.batching import GroupRead


class Rows:
    def __init__(self, rows: dict[str, int]) -> None:
        self.rows = rows
        self.reads: list[list[str]] = []
        self.fail_next = False

    async def fetch(self, keys: Sequence[str]) -> dict[str, int]:
        self.reads.append(list(keys))
        await asyncio.sleep(0)
        if self.fail_next:
            self.fail_next = False
            raise OSError("database gone")
        return {k: self.rows[k] for k in keys if k in self.rows}


async def test_lookups_made_together_are_one_read_and_each_gets_its_own_row() -> None:
    rows = Rows({"a": 1, "b": 2})
    reads = GroupRead(rows.fetch)
    got = await asyncio.gather(reads.get("a"), reads.get("b"), reads.get("nobody"),
                               reads.get("a"))
    assert got == [1, 2, None, 1]
    assert rows.reads == [["a", "b", "nobody"]]


async def test_lookups_during_a_read_wait_for_the_next_and_big_bursts_are_split() -> None:
    rows = Rows({str(i): i for i in range(25)})
    reads = GroupRead(rows.fetch, most=10)
    got = await asyncio.gather(*(reads.get(str(i)) for i in range(25)))
    assert got == list(range(25))
    assert [len(r) for r in rows.reads] == [10, 10, 5]


async def test_a_failed_read_fails_its_lookups_only() -> None:
    rows = Rows({"a": 1})
    reads = GroupRead(rows.fetch)
    rows.fail_next = True
    with pytest.raises(OSError, match="database gone"):
        await reads.get("a")
    assert await reads.get("a") == 1


async def test_a_cancelled_lookup_does_not_disturb_the_others() -> None:
    rows = Rows({"a": 1, "b": 2})
    reads = GroupRead(rows.fetch)
    first = asyncio.ensure_future(reads.get("a"))
    second = asyncio.ensure_future(reads.get("b"))
    await asyncio.sleep(0)
    first.cancel()
    assert await second == 2
    assert first.cancelled()

"""The customers of bench/e2e.py, as the web chat page behaves, and a history to start from.

`converse_all`: one task per conversation; each posts its message at its offered time (or as
soon as the previous reply was visible, whichever is later), then waits for the reply the way
the page does: long-poll `GET /api/webchat/messages?after=<cursor>&wait=25`, or one
`/api/webchat/events` stream per conversation. Returns the span and each message's
post -> reply-visible time.

`prefill`: writes earlier conversations straight into a SQLite file (customers, identities,
resolved conversations with customer and bot messages, and the inbox rows of the last three
days), so the service runs against a year of history.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

POLL_WAIT = 25
REPLY_TIMEOUT = 60.0
#: (seconds to the reply, message number, seconds after the start it was posted, polls)
TRACE: list[tuple[float, int, float, int]] = []


async def converse_all(port: int, texts: list[tuple[str, str]], rate: float, *,
                       sse: bool) -> tuple[float, list[float]]:
    by_visitor: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for n, (visitor, text) in enumerate(texts):
        by_visitor[visitor].append((n, text))
    seen: list[float] = []
    start = time.perf_counter() + 0.5
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=POLL_WAIT + 10)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector,
                                     timeout=timeout) as client:
        await asyncio.gather(*(
            _converse(client, visitor, items, start, rate, seen, sse)
            for visitor, items in by_visitor.items()))
    return time.perf_counter() - start, seen


async def _converse(client: aiohttp.ClientSession, visitor: str, items: list[tuple[int, str]],
                    start: float, rate: float, seen: list[float], sse: bool) -> None:
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    reader = asyncio.create_task(_events(client, visitor, inbox)) if sse else None
    cursor = 0
    try:
        for n, text in items:
            if rate > 0:
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            posted = time.perf_counter()
            async with client.post("/api/webchat/messages", json={
                    "visitor_id": visitor, "text": text,
                    "client_message_id": f"bench-{n:08d}-xxxxxxxx"}) as resp:
                if resp.status != 202:
                    raise SystemExit(f"post failed: {resp.status} {await resp.text()}")
            mine = False
            polls = 0
            deadline = posted + REPLY_TIMEOUT
            while time.perf_counter() < deadline:
                batch = await (_next_events(inbox) if sse else _poll(client, visitor, cursor))
                polls += 1
                for m in batch:
                    cursor = max(cursor, int(m["id"]))
                    if m["from"] == "you":
                        mine = True
                    elif mine:
                        seen.append(time.perf_counter() - posted)
                        TRACE.append((seen[-1], n, posted - start, polls))
                        break
                else:
                    continue
                break
    finally:
        if reader is not None:
            reader.cancel()


async def _poll(client: aiohttp.ClientSession, visitor: str, after: int) -> list[dict[str, Any]]:
    async with client.get("/api/webchat/messages", params={
            "visitor_id": visitor, "after": after, "wait": POLL_WAIT}) as resp:
        return list((await resp.json())["messages"])


async def _next_events(inbox: asyncio.Queue[dict[str, Any]]) -> list[dict[str, Any]]:
    first = await inbox.get()
    batch = [first]
    while not inbox.empty():
        batch.append(inbox.get_nowait())
    return batch


async def _events(client: aiohttp.ClientSession, visitor: str,
                  inbox: asyncio.Queue[dict[str, Any]]) -> None:
    async with client.get("/api/webchat/events", params={"visitor_id": visitor}) as resp:
        kind = "message"
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "message":  # not "typing" news
                inbox.put_nowait(json.loads(line[6:]))
            elif not line:  # the end of one event
                kind = "message"


def prefill(path: Path, messages: int, *, per_conversation: int = 10) -> None:
    """`messages` earlier web chat messages over messages / per_conversation conversations,
    spread over the past year."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    conversations = max(1, messages // per_conversation)
    fmt = "%Y-%m-%d %H:%M:%S.%f"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    next_msg = (db.execute("SELECT COALESCE(MAX(id), 0) FROM message").fetchone()[0]) + 1
    first = (db.execute("SELECT COALESCE(MAX(id), 0) FROM customer").fetchone()[0]) + 1
    chunk = 10_000
    for top in range(0, conversations, chunk):
        ids = range(first + top, first + min(conversations, top + chunk))
        people, identities, convs, rows, inbox = [], [], [], [], []
        for cid in ids:
            at = now - timedelta(days=rng.uniform(0, 365))
            stamp = at.strftime(fmt)
            visitor = f"prefill-visitor-{cid:010d}"
            people.append((cid, "awareness", stamp))
            identities.append((cid, cid, visitor, stamp))
            convs.append((cid, cid, cid, visitor, "resolved", "en", "awareness", "{}", stamp,
                          stamp))
            for k in range(per_conversation):
                when = (at + timedelta(seconds=20 * k)).strftime(fmt)
                inbound = k % 2 == 0
                ext = f"{visitor}:{k:08d}" if inbound else None
                meta = None if inbound else json.dumps({"in_reply_to": next_msg - 1})
                rows.append((next_msg, cid, "in" if inbound else "out", ext,
                             "customer" if inbound else "bot",
                             "How much does shipping cost?" if inbound else "Shipping is free.",
                             "en", "answer" if inbound else None,
                             "received" if inbound else "delivered", meta, when,
                             None if inbound else when))
                if inbound and at > now - timedelta(days=3):
                    inbox.append(("webchat", ext, f"webchat:{visitor}", cid % 1024, "{}",
                                  "done", when, when))
                next_msg += 1
        db.executemany("INSERT INTO customer (id, stage, orders_count, total_spent, created_at) "
                       "VALUES (?, ?, 0, 0, ?)", people)
        db.executemany("INSERT INTO identity (id, customer_id, channel, address, created_at) "
                       "VALUES (?, ?, 'webchat', ?, ?)", identities)
        db.executemany("INSERT INTO conversation (id, customer_id, identity_id, channel, "
                       "address, status, language, stage, meta, created_at, updated_at) "
                       "VALUES (?, ?, ?, 'webchat', ?, ?, ?, ?, ?, ?, ?)", convs)
        db.executemany("INSERT INTO message (id, conversation_id, direction, channel, "
                       "external_id, author, text, language, decision, status, meta, "
                       "created_at, sent_at) VALUES (?, ?, ?, 'webchat', ?, ?, ?, ?, ?, ?, ?, "
                       "?, ?)", rows)
        db.executemany("INSERT INTO inbox (channel, external_id, conversation_key, shard, "
                       "payload, status, attempts, created_at, done_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)", inbox)
        db.commit()
    db.execute("ANALYZE")
    db.commit()
    db.close()

"""End-to-end throughput and latency: web chat -> durable queue -> FAQ answer -> delivered.

Starts `python -m bot serve` on a fresh SQLite file (or the DATABASE_URL you pass), posts
messages over many conversations at a fixed rate from this process, waits until every one is
answered, then reads accept and delivery times from the database:

    python bench/e2e.py                        # 10,000 messages, 200 conversations, 1,000/s
    python bench/e2e.py --rate 0               # as fast as the client can post

Latency = reply delivered (message.sent_at) - message accepted (inbox.created_at).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.db.engine import Database  # noqa: E402
from bot.db.models import InboxItem, Message  # noqa: E402

QUESTIONS = ["How much does shipping cost?", "Quanto costa la spedizione?", "ค่าส่งเท่าไหร่",
             "Where is my order?", "How do I return an item?", "Do you ship to Norway?",
             "Which payment methods do you accept?", "Posso pagare con PayPal?",
             "Do you sell garden furniture?", "What size should I take?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int) -> None:
    for _ in range(300):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise SystemExit("the service did not start")


async def post_all(port: int, total: int, conversations: int, rate: float,
                   concurrency: int) -> float:
    queue: asyncio.Queue[tuple[int, str, str] | None] = asyncio.Queue()
    for n in range(total):
        queue.put_nowait((n, f"bench-visitor-{n % conversations:05d}", QUESTIONS[n % 10]))
    errors = 0
    start = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as client:
        async def worker() -> None:
            nonlocal errors
            while True:
                item = queue.get_nowait() if not queue.empty() else None
                if item is None:
                    return
                n, visitor, text = item
                if rate > 0:
                    delay = start + n / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                async with client.post("/api/webchat/messages", json={
                        "visitor_id": visitor, "text": text,
                        "client_message_id": f"bench-{n:08d}-xxxxxxxx"}) as resp:
                    if resp.status != 202:
                        errors += 1
                        print("post failed:", resp.status, await resp.text(), file=sys.stderr)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    if errors:
        raise SystemExit(f"{errors} posts failed")
    return time.perf_counter() - start


async def wait_drained(db: Database, total: int, timeout: float) -> None:
    """Until every message is handled and every reply delivered (a message that arrives while
    a person owns the conversation gets no bot reply, by design)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with db.read() as conn:
            done = (await conn.execute(select(func.count()).select_from(InboxItem).where(
                InboxItem.status == "done"))).scalar_one()
            waiting = (await conn.execute(select(func.count()).select_from(Message).where(
                Message.direction == "out", Message.sent_at.is_(None)))).scalar_one()
        if done >= total and waiting == 0:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"only {done} of {total} messages handled in {timeout} s")


async def latencies(db: Database) -> tuple[list[float], float]:
    async with db.read() as conn:
        accepted = dict((await conn.execute(select(InboxItem.external_id,
                                                   InboxItem.created_at))).all())
        inbound = dict((await conn.execute(select(Message.id, Message.external_id)
                                           .where(Message.direction == "in"))).all())
        replies = (await conn.execute(select(Message.meta, Message.sent_at)
                                      .where(Message.direction == "out"))).all()
    values = []
    first = min(accepted.values())
    last = first
    for meta, sent_at in replies:
        accepted_at = accepted[inbound[meta["in_reply_to"]]]
        values.append((sent_at - accepted_at).total_seconds())
        last = max(last, sent_at)
    return values, (last - first).total_seconds()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s, 0 = unlimited")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="storedesk-bench-"))
    url = args.database_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "WORKERS": str(args.workers),
           "WEBCHAT_RATE_PER_MINUTE": "100000000", "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=ROOT, env=env)
    db = Database(url)
    try:
        await wait_port(port)
        post_time = await post_all(port, args.messages, args.conversations, args.rate,
                                   args.concurrency)
        await wait_drained(db, args.messages, timeout=600)
        lat, span = await latencies(db)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        await db.close()
    backend = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    print(f"\nend-to-end on {backend}, 1 process, {args.workers} worker tasks, "
          f"{args.messages} messages over {args.conversations} conversations, "
          f"offered rate {args.rate or 'unlimited'}/s")
    accepted = args.messages / post_time
    print(f"  posted in        {post_time:8.2f} s  ({accepted:8.0f} msg/s accepted)")
    print(f"  answered in      {span:8.2f} s  ({args.messages / span:8.0f} msg/s end to end)")
    print(f"  latency p50      {statistics.median(lat) * 1000:8.1f} ms")
    print(f"  latency p99      {pct(lat, 0.99) * 1000:8.1f} ms")
    print(f"  latency max      {max(lat) * 1000:8.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())

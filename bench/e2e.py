"""End-to-end throughput and latency: web chat -> durable queue -> FAQ answer -> on the page.

Starts `python -m bot serve` on a fresh SQLite file (or the DATABASE_URL you pass) and plays
customers at a fixed offered rate. By default each conversation behaves like the web chat
page: it posts a message, then long-polls `GET /api/webchat/messages?after=..&wait=..` (or
reads the `/api/webchat/events` stream) until the reply is visible, and only then may send its
next message. Printed: the latency the customer sees (post -> reply visible) and the
server-side figures read from the database (accepted -> reply committed):

    python bench/e2e.py                        # 10,000 messages, 1,000 conversations, 1,000/s
    python bench/e2e.py --client sse           # the page's event stream instead of long-poll
    python bench/e2e.py --prefill 1000000      # after a million earlier messages (SQLite)
    python bench/e2e.py --prefill 1000000 --cold-rollups  # ... the first start after an import
    python bench/e2e.py --client none --rate 0 # posts only, as fast as the client can
    python bench/e2e.py --split 2              # `web` + 2 `worker` processes, PostgreSQL + Redis

The traffic looks like a shop's: each conversation asks a few different questions of the
sample FAQ in English, Italian or Thai (phrasings of its entries, lightly reworded), and one
conversation in ten asks something the FAQ cannot answer and is escalated (its later questions
are still answered while it waits for a person).

Latency = reply delivered (message.sent_at) - message accepted (inbox.created_at); for a message
that gets no reply by design, handled (inbox.done_at) - accepted. The server's CPU time per
message is printed too: it does not depend on what else the machine is doing.
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
from typing import Any

import aiohttp
from sqlalchemy import func, select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.e2e_client import TRACE, converse_all, prefill  # noqa: E402
from bot.admin import rollups  # noqa: E402
from bot.db.engine import Database  # noqa: E402
from bot.db.models import InboxItem, Message  # noqa: E402


def OURS(table: Any) -> Any:
    """This run's rows, not the prefilled history."""
    return table.external_id.like("bench-visitor-%")


UNANSWERABLE = ["Do you sell garden furniture?", "Avete mobili da giardino?",
                "Can I bring my dog to the warehouse?"]


def faq_questions() -> list[list[str]]:
    """Per answerable sample FAQ entry, its phrasings, lightly reworded as customers type."""
    from faq.loader import load_faq_dir

    loaded = load_faq_dir(ROOT / "faq" / "sample")
    entries = getattr(loaded, "entries", loaded)
    out = []
    for entry in entries:
        if entry.escalate or getattr(entry, "kind", "answer") != "answer":
            continue
        out.append([q.rstrip("?").lower() if n % 2 else f"hi, {q}"
                    for n, q in enumerate(entry.questions)])
    return out


def conversation_texts(total: int, conversations: int) -> list[tuple[str, str]]:
    """(visitor, text) in posting order: round-robin over conversations, so every conversation
    has a message in flight at once; different entries within a conversation."""
    entries = faq_questions()
    per_conv = -(-total // conversations)
    out: list[tuple[str, str]] = []
    for turn in range(per_conv):
        for conv in range(conversations):
            if len(out) == total:
                return out
            visitor = f"bench-visitor-{conv:06d}"
            if conv % 10 == 9 and turn == 2:
                text = UNANSWERABLE[conv % len(UNANSWERABLE)]
            else:
                phrasings = entries[(conv * 7 + turn) % len(entries)]
                text = phrasings[(conv + turn) % len(phrasings)]
            out.append((visitor, text))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and of its helpers (the FAQ matching process):
    Linux /proc, children found through each thread's `children` list."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            children.update(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return own + sum(cpu_seconds(c) for c in children if Path(f"/proc/{c}").exists())


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
    for n, (visitor, text) in enumerate(conversation_texts(total, conversations)):
        queue.put_nowait((n, visitor, text))
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
                InboxItem.status == "done", OURS(InboxItem)))).scalar_one()
            waiting = (await conn.execute(select(func.count()).select_from(Message).where(
                Message.direction == "out", Message.sent_at.is_(None)))).scalar_one()
        if done >= total and waiting == 0:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"only {done} of {total} messages handled in {timeout} s")


async def latencies(db: Database) -> tuple[list[float], float, dict[str, int]]:
    """Per message: reply delivered (or, with no reply, handled) minus accepted; the span from
    the first acceptance to the last delivery; inbound messages per decision."""
    async with db.read() as conn:
        accepted = {ext: (created, done) for ext, created, done in (await conn.execute(
            select(InboxItem.external_id, InboxItem.created_at, InboxItem.done_at)
            .where(OURS(InboxItem)))).all()}
        inbound = dict((await conn.execute(select(Message.id, Message.external_id)
                                           .where(Message.direction == "in",
                                                  OURS(Message)))).all())
        decisions = dict((await conn.execute(
            select(Message.decision, func.count()).where(Message.direction == "in",
                                                         OURS(Message))
            .group_by(Message.decision))).all())
        replies = (await conn.execute(select(Message.meta, Message.sent_at).where(
            Message.direction == "out", Message.id > min(inbound)))).all()
    finished = {ext: done for ext, (_, done) in accepted.items()}
    replied: dict[str, Any] = {}
    for meta, sent_at in replies:  # the first reply of each message
        ext = inbound.get((meta or {}).get("in_reply_to"))
        if ext is not None and sent_at is not None:
            replied[ext] = min(sent_at, replied.get(ext, sent_at))
    finished.update(replied)
    first = min(created for created, _ in accepted.values())
    values = [(finished[ext] - created).total_seconds() for ext, (created, _) in accepted.items()]
    return values, (max(finished.values()) - first).total_seconds(), decisions


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--conversations", type=int, default=0,
                        help="default: one per 10 messages (one per 5 with --client none)")
    parser.add_argument("--client", choices=("longpoll", "sse", "none"), default="longpoll",
                        help="how the customers wait for replies (none: post and forget)")
    parser.add_argument("--prefill", type=int, default=0,
                        help="earlier messages written to the database first (SQLite)")
    parser.add_argument("--cold-rollups", action="store_true",
                        help="with --prefill: leave the dashboard's rollups of that history to "
                             "the service (the first start after an import)")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages/s, 0 = unlimited")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL"))
    parser.add_argument("--split", type=int, default=0, metavar="N",
                        help="`python -m bot web` + N `python -m bot worker` processes on a "
                        "fresh PostgreSQL database and Redis Streams (BENCH_PG, BENCH_REDIS)")
    args = parser.parse_args()
    if args.split:
        from bench.scale import REDIS, pg_database

        async with pg_database() as url:
            await run(args, url, redis=f"{REDIS}")
        return
    await run(args, args.database_url, redis=None)


async def run(args: argparse.Namespace, database_url: str | None, *, redis: str | None) -> None:
    args.conversations = args.conversations or max(
        1, args.messages // (5 if args.client == "none" else 10))

    tmp = Path(tempfile.mkdtemp(prefix="storedesk-bench-"))
    url = database_url or f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
    if args.prefill:
        if not url.startswith("sqlite"):
            raise SystemExit("--prefill writes SQLite files only")
        db = Database(url)
        await db.upgrade()
        took = time.perf_counter()
        prefill(Path(url.split("///", 1)[1]), args.prefill)
        print(f"prefilled {args.prefill} earlier messages in "
              f"{time.perf_counter() - took:.1f} s", flush=True)
        if not args.cold_rollups:  # as a service that ran through that history has them
            took = time.perf_counter()
            await rollups.refresh(db)
            print(f"dashboard rollups of that history built in "
                  f"{time.perf_counter() - took:.1f} s", flush=True)
        await db.close()
    port = free_port()
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port), "WORKERS": str(args.workers),
           "WEBCHAT_RATE_PER_MINUTE": "100000000", "LOG_LEVEL": "WARNING"}
    if redis:
        env.update(REDIS_URL=redis, REDIS_PREFIX=f"bench{os.getpid()}")
        schema = Database(url)
        await schema.upgrade()
        await schema.close()
    servers = [subprocess.Popen([sys.executable, "-m", "bot", "web" if redis else "serve"],
                                cwd=ROOT, env=env)]
    servers += [subprocess.Popen([sys.executable, "-m", "bot", "worker"], cwd=ROOT,
                                 env={**env, "PORT": "0"}) for _ in range(args.split)]
    db = Database(url)
    try:
        await wait_port(port)
        await asyncio.sleep(2 if redis else 0)  # the workers start too
        cpu_before = sum(cpu_seconds(s.pid) for s in servers)
        client_before = time.process_time()
        seen: list[float] = []
        if args.client == "none":
            post_time = await post_all(port, args.messages, args.conversations, args.rate,
                                       args.concurrency)
        else:
            post_time, seen = await converse_all(
                port, conversation_texts(args.messages, args.conversations), args.rate,
                sse=args.client == "sse")
        client_cpu = time.process_time() - client_before
        await wait_drained(db, args.messages, timeout=600)
        cpu_used = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
        lat, span, decisions = await latencies(db)
    finally:
        for server in servers:
            server.send_signal(signal.SIGTERM)
        for server in servers:
            server.wait(timeout=30)
        await db.close()
    backend = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    shape = (f"web + {args.split} worker processes (Redis Streams)" if redis else "1 process")
    history = f", {args.prefill} earlier messages" if args.prefill else ""
    print(f"\nend-to-end on {backend}, {shape}, {args.workers} worker tasks each, "
          f"{args.messages} messages over {args.conversations} conversations{history}, "
          f"offered rate {args.rate or 'unlimited'}/s, client {args.client}")
    accepted = args.messages / post_time
    if seen:
        print(f"  seen by customers {post_time:7.2f} s  ({len(seen) / post_time:8.0f} msg/s "
              f"replies visible on the page, {args.messages - len(seen)} without a reply)")
        print(f"  on the page p50  {statistics.median(seen) * 1000:8.1f} ms")
        print(f"  on the page p99  {pct(seen, 0.99) * 1000:8.1f} ms")
        print(f"  on the page max  {max(seen) * 1000:8.1f} ms")
        # every conversation's first message is posted in the first second (a new customer,
        # conversation and page each), the rest is the steady state: both, apart
        first = [took for took, n, _, _ in TRACE if n < args.conversations]
        later = [took for took, n, _, _ in TRACE if n >= args.conversations]
        for label, part in (("first messages", first), ("later messages", later)):
            if part:
                print(f"  {label}   p50 {statistics.median(part) * 1000:7.1f} ms, "
                      f"p99 {pct(part, 0.99) * 1000:7.1f} ms ({len(part)})")
        print("  slowest          " + ", ".join(
            f"#{n} posted at {at:.1f} s: {took * 1000:.0f} ms, {polls} polls"
            for took, n, at, polls in sorted(TRACE, reverse=True)[:4]))
        print("  server side:")
    else:
        print(f"  posted in        {post_time:8.2f} s  ({accepted:8.0f} msg/s accepted)")
    print(f"  answered in      {span:8.2f} s  ({args.messages / span:8.0f} msg/s end to end)")
    print(f"  latency p50      {statistics.median(lat) * 1000:8.1f} ms")
    print(f"  latency p99      {pct(lat, 0.99) * 1000:8.1f} ms")
    print(f"  latency max      {max(lat) * 1000:8.1f} ms")
    print(f"  server CPU       {cpu_used / args.messages * 1000:8.3f} ms per message "
          f"({args.messages / cpu_used:.0f} msg/s per core)")
    print(f"  client CPU       {client_cpu / args.messages * 1000:8.3f} ms per message posted")
    print("  decisions        " + ", ".join(f"{k} {v}" for k, v in sorted(decisions.items())))
    print(f"  load average     {os.getloadavg()[0]:8.1f} (2 cores)")


if __name__ == "__main__":
    try:  # the load generator shares the two cores: the cheaper loop when installed
        import uvloop
        loop_factory = uvloop.new_event_loop
    except ImportError:
        loop_factory = None  # type: ignore[assignment]
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())

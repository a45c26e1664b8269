"""Webhook latency while the database is busy elsewhere: a dashboard query in the same process,
an order import from the command line in another (SQLite, the embedded default).

    python bench/loop_blocking.py                      # 100k seeded messages, 10 s per phase
    python bench/loop_blocking.py --messages 300000 --seconds 20 --rate 100 --orders 20000

Seeds a history (`bench/seed.py`'s generator, kept in bench/results/ and reused with --reuse),
starts `python -m bot serve` on it, and posts web chat messages at `--rate` per second (the
customer's webhook: committed to the queue before the 202) for `--seconds` in each phase:
1. idle;
2. an admin reloading the dashboard's heaviest panels one after the other (cache off);
3. `python -m bot import-orders` of `--orders` rows running in another process.
Prints per phase the webhook p50 / p99 / max and how many were refused, then the dashboard
request times and how long the import took.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.seed import seed_demo  # noqa: E402
from bot.db.engine import Database  # noqa: E402
from faq.loader import load_faq_dir  # noqa: E402

TOKEN = "bench-admin-token-0123456789"
DASHBOARD = ["/api/dashboard/performance?by=stage&period=90d",
             "/api/dashboard/stages?period=90d", "/api/dashboard/kpis?period=90d",
             "/api/conversations?period=90d", "/api/dashboard/faq?period=90d"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fresh(path: Path, reuse: bool) -> bool:
    """Whether the history must be seeded (removing an old one unless reused)."""
    if reuse and path.exists():
        return False
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return True


async def seeded(path: Path, messages: int) -> None:
    db = Database(f"sqlite+aiosqlite:///{path}")
    try:
        await db.upgrade()
        started = time.perf_counter()
        await seed_demo(db, load_faq_dir(ROOT / "faq" / "sample"), messages=messages, days=90,
                        seed=7)
        print(f"seeded {messages} messages in {time.perf_counter() - started:.0f} s")
    finally:
        await db.close()


def orders_csv(path: Path, rows: int) -> None:
    rng = random.Random(3)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["email", "order_id", "total", "currency", "placed_at", "status"])
        for n in range(rows):
            out.writerow([f"import{n % (rows // 2 or 1)}@example.com", f"imp-{n}",
                          f"{rng.uniform(10, 300):.2f}", "EUR", "2026-10-01T10:00:00Z", "paid"])


async def post_messages(base: str, rate: float, seconds: float) -> tuple[list[float], int]:
    """Web chat messages at `rate`/s, each from its own visitor; latencies in ms, refusals."""
    latencies: list[float] = []
    refused = 0
    interval = 1 / rate
    async with aiohttp.ClientSession(base) as session:
        async def one(n: int) -> None:
            nonlocal refused
            started = time.perf_counter()
            async with session.post("/api/webchat/messages", json={
                    "text": "How long does shipping take?",
                    "visitor_id": f"loopbench-{os.getpid()}-{n:08d}"}) as resp:
                await resp.read()
                if resp.status != 202:
                    refused += 1
            latencies.append((time.perf_counter() - started) * 1000)

        tasks = []
        start = time.perf_counter()
        n = 0
        while (now := time.perf_counter()) - start < seconds:
            tasks.append(asyncio.create_task(one(n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - now))
        await asyncio.gather(*tasks)
    return latencies, refused


async def dashboard_loop(base: str, stop: asyncio.Event) -> list[float]:
    times: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(base, headers=headers) as session:
        n = 0
        while not stop.is_set():
            started = time.perf_counter()
            async with session.get(DASHBOARD[n % len(DASHBOARD)]) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
            times.append((time.perf_counter() - started) * 1000)
            n += 1
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def report(name: str, latencies: list[float], refused: int) -> None:
    print(f"{name:<22} webhooks {len(latencies):>5}  p50 {statistics.median(latencies):7.1f} ms"
          f"  p99 {pct(latencies, 0.99):7.1f} ms  max {max(latencies):7.1f} ms"
          f"  refused {refused}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"loop_{args.messages}.db"
    if fresh(path, args.reuse):
        await seeded(path, args.messages)
    csv_path = results / f"loop_orders_{args.orders}.csv"
    orders_csv(csv_path, args.orders)
    port = free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{path}", "PORT": str(port),
           "ADMIN_TOKEN": TOKEN, "DASHBOARD_CACHE_SECONDS": "0", "LOG_LEVEL": "WARNING",
           "WEBCHAT_RATE_PER_MINUTE": "100000"}
    log = (results / "loop_server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "bot", "serve"], env=env, cwd=ROOT,
                              stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                try:
                    async with session.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        print(f"load average {os.getloadavg()[0]:.2f}; {args.rate:.0f} webhooks/s, "
              f"{args.seconds:.0f} s per phase, {args.messages} messages of history")
        report("idle", *await post_messages(base, args.rate, args.seconds))

        stop = asyncio.Event()
        board = asyncio.create_task(dashboard_loop(base, stop))
        report("dashboard queries", *await post_messages(base, args.rate, args.seconds))
        stop.set()
        times = await board

        started = time.perf_counter()
        importer = subprocess.Popen(
            [sys.executable, "-m", "bot", "import-orders", str(csv_path)], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        report("CLI order import", *await post_messages(base, args.rate, args.seconds))
        _, err = await asyncio.to_thread(importer.communicate)
        took = time.perf_counter() - started
        status = "done" if importer.returncode == 0 else f"failed: {err.strip()[-200:]}"
        print(f"dashboard requests {len(times)}: p50 {statistics.median(times):.0f} ms, "
              f"max {max(times):.0f} ms; import of {args.orders} orders {status} in {took:.1f} s")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
        print(f"server log: {log.name}")


if __name__ == "__main__":
    asyncio.run(main())

"""Dashboard API response times on a big seeded history, SQLite and PostgreSQL.

    python bench/dashboard_api.py --messages 1000000 --db sqlite --db postgresql

Seeds `--messages` messages with `bench/seed.py`'s generator (90 days), starts the
service (HTTP only) and calls every dashboard endpoint `--repeat` times per period, one request
at a time, through real HTTP. Prints p50/p99 per endpoint and period. The seeded databases are
kept (bench/results/, database storedesk_bench_<n>) and reused with --reuse. By default the
dashboard's background cache is off, so the numbers are the SQL itself (rollups of closed days
plus live SQL for the rest); --cache-seconds 60 measures what an admin gets with the default
setting. Before measuring, the rollups are brought up to date (timed; bench/seed.py builds them,
a reused database only gets the days since). "CPU" is this process's CPU time per request
(client and server both run here), steadier than wall-clock time on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.seed import seed_demo  # noqa: E402
from bot.admin.rollups import refresh  # noqa: E402
from bot.app import Service  # noqa: E402
from bot.db.engine import Database  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from faq.loader import load_faq_dir  # noqa: E402

TOKEN = "bench-admin-token-0123456789"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ENDPOINTS = [
    ("stages", "/api/dashboard/stages"),
    ("flow", "/api/dashboard/flow"),
    ("performance by stage", "/api/dashboard/performance?by=stage"),
    ("performance by channel", "/api/dashboard/performance?by=channel"),
    ("faq", "/api/dashboard/faq"),
    ("conversations (stage filter)", "/api/conversations?stage=purchase"),
    ("conversations (all)", "/api/conversations"),
    ("conversation detail", "/api/dashboard/conversations/1000"),
]


def sqlite_file(messages: int, reuse: bool) -> tuple[str, bool]:
    path = ROOT / "bench" / "results" / f"dashboard_{messages}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not reuse:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite+aiosqlite:///{path}", not path.exists()


async def database_url(kind: str, messages: int, reuse: bool) -> tuple[str, bool]:
    """(url, needs seeding)"""
    if kind == "sqlite":
        return sqlite_file(messages, reuse)
    import asyncpg

    name = f"storedesk_bench_{messages}"
    admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists and not reuse:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            exists = None
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}", not exists


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    pos = p * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


Row = tuple[str, str, str, float, float, float]


async def run(kind: str, args: argparse.Namespace) -> list[Row]:
    url, fresh = await database_url(kind, args.messages, args.reuse)
    settings = load_settings(_env_file=None, database_url=url, host="127.0.0.1", port=0,
                             admin_token=TOKEN, log_level="WARNING",
                             dashboard_cache_seconds=args.cache_seconds)
    db = Database(url)
    try:
        await db.upgrade()  # a reused database gets new migrations too
        if fresh:
            stats = await seed_demo(db, load_faq_dir(settings.faq_dir), messages=args.messages)
            print(f"[{kind}] seeded {stats.messages} messages, {stats.conversations} "
                  f"conversations, {stats.escalations} escalations in {stats.seconds} s "
                  "(rollups included)", flush=True)
        # what the service's background task does on start, timed here
        rolled = await refresh(db)
        print(f"[{kind}] rollups: {rolled.days} days {'rebuilt' if rolled.rebuilt else 'added'}"
              f" in {rolled.seconds} s, up to {rolled.rolled_until}", flush=True)
    finally:
        await db.close()
    service = Service(settings)
    await service.start(workers=False)
    rows = []
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}",
                                         headers=headers) as client:
            for period in args.periods:
                for name, path in ENDPOINTS:
                    sep = "&" if "?" in path else "?"
                    target = f"{path}{sep}period={period}"
                    times, cpu = [], []
                    for i in range(args.warmup + args.repeat):
                        started, cpu_started = time.perf_counter(), time.process_time()
                        async with client.get(target) as resp:
                            await resp.read()
                            if resp.status != 200:
                                raise SystemExit(f"{target}: HTTP {resp.status}")
                        if i >= args.warmup:
                            times.append((time.perf_counter() - started) * 1000)
                            cpu.append((time.process_time() - cpu_started) * 1000)
                    rows.append((kind, period, name, statistics.median(times), pct(times, 0.99),
                                 statistics.median(cpu)))
                    print(f"[{kind}] {period:>4} {name:<30} p50 {rows[-1][3]:7.1f} ms  "
                          f"p99 {rows[-1][4]:7.1f} ms  cpu p50 {rows[-1][5]:6.1f} ms",
                          flush=True)
    finally:
        await service.stop()
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--db", action="append", choices=("sqlite", "postgresql"))
    parser.add_argument("--periods", default="7d,30d")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reuse", action="store_true", help="reuse an already seeded database")
    parser.add_argument("--cache-seconds", type=float, default=0.0,
                        help="DASHBOARD_CACHE_SECONDS; 0 (default) measures the live queries")
    args = parser.parse_args()
    args.periods = args.periods.split(",")
    rows = []
    for kind in args.db or ["sqlite"]:
        rows += await run(kind, args)
    mode = "live queries" if not args.cache_seconds else \
        f"background cache ({args.cache_seconds:g} s) for preset periods"
    print(f"\ndashboard API, {args.messages:,} messages, {args.repeat} requests each "
          f"(after {args.warmup} warm-up), one at a time, {mode}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| database   | period | endpoint                       |   p50 ms |   p99 ms |"
          " CPU p50 ms |")
    print("|------------|--------|--------------------------------|---------:|---------:|"
          "-----------:|")
    for kind, period, name, p50, p99, cpu in rows:
        print(f"| {kind:<10} | {period:<6} | {name:<30} | {p50:8.1f} | {p99:8.1f} |"
              f" {cpu:10.1f} |")


if __name__ == "__main__":
    asyncio.run(main())

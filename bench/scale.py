"""Throughput and latency of the deployed shape: `python -m bot web` + N `python -m bot worker`
processes on PostgreSQL + Redis, next to `python -m bot serve` on SQLite (one process).

    python bench/scale.py                      # sqlite, pg+redis with 1 and 2 workers
    python bench/scale.py --messages 5000 --conversations 200 --modes pg2
    python bench/scale.py --drain --modes pg1,pg2  # queue first, then time the workers alone

Messages are posted through the web chat API (each conversation in order, all conversations
at once). Throughput = messages / (first post .. last reply sent); latency = reply sent_at -
inbound created_at per message, from the database. Needs PostgreSQL on 127.0.0.1:5432 (user
postgres) and Redis on 127.0.0.1:6379.

`--drain`: every message is queued before any worker runs, then the workers start; throughput
= handled rows / (first .. last `inbox.done_at`). Nothing else runs meanwhile (no load
generator, an idle web process), so it is the workers' capacity: what a second worker adds
when the client is not competing for the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgres@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
QUESTION = "How much does shipping cost?"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """Processes of one deployment; `env` is what they share."""

    env: dict[str, str]
    port: int
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: Path = Path("/tmp")

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "bot", *args], cwd=ROOT, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    async def wait_ready(self, within: float = 240.0) -> None:
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{self.port}/readyz") as resp:
                        if resp.status == 200:
                            return
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{name} exited with {proc.returncode}; see "
                                           f"{self.logs / (name + '.log')}")
                await asyncio.sleep(0.2)
        raise TimeoutError("the web process did not become ready")


def base_env(database_url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "REDIS_", "ADMIN_", "PORT", "WORKERS"))}
    env.update({
        "DATABASE_URL": database_url, "PORT": str(port), "HOST": "127.0.0.1",
        "WEBCHAT_RATE_PER_MINUTE": "100000000", "REPEAT_WINDOW_MINUTES": "0.000001",
        "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), "ADMIN_TOKEN": "bench-admin-token-0123",
    })
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    import asyncpg

    name = f"storedesk_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(f"postgresql://{PG}/postgres", timeout=3)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield f"postgresql+asyncpg://{PG}/{name}"
    finally:
        conn = await asyncpg.connect(f"postgresql://{PG}/postgres", timeout=3)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def post_all(port: int, conversations: int, per: int, *,
                   on_progress: Any = None) -> list[str]:
    """Post `per` messages in each of `conversations` visitors, each visitor in order."""
    visitors = [f"bench-{uuid.uuid4().hex[:20]}" for _ in range(conversations)]
    posted = 0
    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}",
                                     connector=connector, timeout=timeout) as http:

        async def converse(visitor: str) -> None:
            nonlocal posted
            for i in range(per):
                body = {"visitor_id": visitor, "text": QUESTION,
                        "client_message_id": f"m{i:05d}-{uuid.uuid4().hex[:12]}"}
                for attempt in range(20):
                    try:
                        async with http.post("/api/webchat/messages", json=body) as resp:
                            if resp.status == 202:
                                break
                            if resp.status < 500:
                                raise RuntimeError(f"{resp.status}: {await resp.text()}")
                    except (aiohttp.ClientError, TimeoutError):
                        pass  # a busy web process: post again
                    await asyncio.sleep(0.1 * (attempt + 1))  # same client id: deduplicated
                else:
                    raise RuntimeError("could not post a message")
                posted += 1
                if on_progress is not None:
                    await on_progress(posted)

        await asyncio.gather(*(converse(v) for v in visitors))
    return visitors


async def wait_answered(database_url: str, expected: int, within: float) -> dict[str, Any]:
    """Wait until `expected` replies are sent; return throughput/latency figures."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    deadline = time.monotonic() + within
    try:
        while True:
            async with engine.connect() as conn:
                sent = (await conn.execute(text(
                    "SELECT count(*) FROM message WHERE direction = 'out' AND sent_at IS NOT NULL"
                ))).scalar_one()
            if sent >= expected:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {sent} of {expected} replies sent")
            await asyncio.sleep(0.5)
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT i.created_at AS t_in, o.sent_at AS t_out FROM message o "
                "JOIN message i ON i.id = CAST(o.meta ->> 'in_reply_to' AS INTEGER) "
                "WHERE o.direction = 'out'"))).all()
    finally:
        await engine.dispose()
    lat = sorted(_secs(r.t_out) - _secs(r.t_in) for r in rows)
    first_in = min(_secs(r.t_in) for r in rows)
    last_out = max(_secs(r.t_out) for r in rows)
    return {"messages": len(rows), "seconds": round(last_out - first_in, 2),
            "msg_per_s": round(len(rows) / max(last_out - first_in, 1e-9), 1),
            "p50_s": round(lat[len(lat) // 2], 3), "p99_s": round(lat[int(len(lat) * 0.99)], 3)}


def _secs(value: Any) -> float:
    from datetime import UTC, datetime

    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


async def drained(database_url: str, expected: int, within: float) -> dict[str, Any]:
    """Wait until `expected` inbox rows are handled; their handling rate."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    deadline = time.monotonic() + within
    try:
        while True:
            async with engine.connect() as conn:
                done, first, last = (await conn.execute(text(
                    "SELECT count(*), min(done_at), max(done_at) FROM inbox "
                    "WHERE status = 'done'"))).one()
            if done >= expected:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {expected} messages handled")
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()
    took = _secs(last) - _secs(first)
    return {"messages": done, "seconds": round(took, 2),
            "msg_per_s": round(done / max(took, 1e-9), 1), "p50_s": "-", "p99_s": "-"}


async def run_mode(mode: str, messages: int, conversations: int, workers_per_proc: int,
                   logs: Path, *, drain: bool = False) -> dict[str, Any]:
    per = max(1, messages // conversations)
    port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        if mode == "sqlite":
            db_file = logs / f"bench-{uuid.uuid4().hex[:6]}.db"
            url = f"sqlite+aiosqlite:///{db_file}"
            cluster = Cluster(base_env(url, port, WORKERS=str(workers_per_proc)), port,
                              logs=logs)
            cluster.start("serve", "serve")
        else:
            url = await stack.enter_async_context(pg_database())
            n = int(mode[2:])
            env = base_env(url, port, REDIS_URL=REDIS, WORKERS=str(workers_per_proc),
                           REDIS_PREFIX=f"bench-{uuid.uuid4().hex[:8]}")
            cluster = Cluster(env, port, logs=logs)
            await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "db", "upgrade"],
                                    cwd=ROOT, env=env, check=True, capture_output=True)
            cluster.start("web", "web")
            for i in range(0 if drain else n):
                cluster.start(f"worker{i + 1}", "worker")
        try:
            await cluster.wait_ready()
            await asyncio.sleep(1.0)  # workers connect
            await post_all(port, conversations, per)
            if drain:
                for i in range(int(mode[2:])):
                    cluster.start(f"worker{i + 1}", "worker")
                result = await drained(url, per * conversations, within=600)
            else:
                result = await wait_answered(url, per * conversations, within=600)
        finally:
            cluster.stop()
    return {"mode": mode, **result}


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--workers-per-process", type=int, default=4)
    parser.add_argument("--modes", default="sqlite,pg1,pg2")
    parser.add_argument("--logs", type=Path, default=Path("/tmp/storedesk-bench"))
    parser.add_argument("--drain", action="store_true",
                        help="queue everything first, then time the workers alone (pg modes)")
    args = parser.parse_args(argv)
    args.logs.mkdir(parents=True, exist_ok=True)
    print(f"{'mode':<8} {'messages':>8} {'seconds':>8} {'msg/s':>8} {'p50 s':>8} {'p99 s':>8}")
    for mode in args.modes.split(","):
        r = await run_mode(mode, args.messages, args.conversations, args.workers_per_process,
                           args.logs, drain=args.drain)
        print(f"{r['mode']:<8} {r['messages']:>8} {r['seconds']:>8} {r['msg_per_s']:>8} "
              f"{r['p50_s']:>8} {r['p99_s']:>8}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())

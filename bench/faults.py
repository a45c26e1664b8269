"""Fault injection: does any accepted message get lost, answered twice or out of order when
the service is killed, its database cannot be written, or a channel API misbehaves?

    python bench/faults.py                     # all four scenarios, a few minutes each
    python bench/faults.py --quick             # a short run of each
    python bench/faults.py --scenarios kill-sqlite,channel-errors --messages 2000

Scenarios (`--scenarios`, comma-separated):

kill-sqlite      `python -m bot serve` on SQLite under web chat load, killed with SIGKILL at
                 random moments (`--kills`) and restarted at once.
kill-cluster     `python -m bot web` + two `python -m bot worker` on PostgreSQL + Redis under
                 the same load; the web process or a worker, chosen at random, is killed with
                 SIGKILL and restarted.
readonly-db      `python -m bot serve` on SQLite while Telegram webhooks and web chat posts
                 arrive; the WAL file is made immutable (`chattr +i`, needs root) for a few
                 seconds, then writable again, without a restart.
channel-errors   a fake Telegram Bot API answering 30% 429, 10% 500 and 5% hanging sends (half
                 of them accepted by the platform before the client gives up) to the outbox's
                 replies to one message from each of `--messages` chats (default 1,000), with
                 SEND_TIMEOUT=2 (`--send-timeout`) and the product's SEND_MAX_ATTEMPTS unless
                 `--send-max-attempts` says otherwise. It reports replies delivered once, twice
                 (a timeout retry after the platform had it), never, and recorded as failed
                 although delivered, plus how long replies waited for the platform.

The load is a client that behaves as the contract says: each web chat visitor posts its
messages in order (POST /api/webchat/messages with a client_message_id), retries a POST that was
not acknowledged (no 2xx) with the same client_message_id, and waits for the bot's reply
(GET /api/webchat/messages?visitor_id=..&after=..) before the next message; Telegram webhooks
are re-posted until they get a 2xx, as Telegram does. What was acknowledged (2xx) is then
checked against the database and, for Telegram, against what the fake platform received:

accepted      messages the service acknowledged with a 2xx
lost          accepted but never stored, or stored but never answered (reply sent/delivered)
duplicated    stored twice, or answered twice (for channel-errors: delivered twice)
out of order  within a conversation, messages stored or answered in another order than sent
recovery      per fault: seconds until the service acknowledged messages again ("back") and
              until every message accepted before the fault was answered ("caught up")

Lost, duplicated and out of order must be 0 (channel-errors reports the duplicates a timeout
retry may cause separately: a possible duplicate is the price of never losing an answer).
Needs PostgreSQL on 127.0.0.1:5432 (user postgres) and Redis on 127.0.0.1:6379 for
kill-cluster; every process and fake listens on 127.0.0.1. Logs go to --logs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.scale import REDIS, Cluster, _secs, base_env, free_port, pg_database  # noqa: E402

QUESTION = "How much does shipping cost?"
SCENARIOS = ("kill-sqlite", "kill-cluster", "readonly-db", "channel-errors")
T0 = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {text}", flush=True)


# --- processes ----------------------------------------------------------------------------


@dataclass
class Processes(Cluster):
    """A `Cluster` whose processes can be killed and restarted; each keeps one log."""

    commands: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "bot", *args], cwd=ROOT, env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        self.commands[name] = args
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        with (self.logs / f"{name}.log").open("a") as log:
            log.write(f"=== bench/faults.py: SIGKILL at {time.strftime('%H:%M:%S')} ===\n")

    def restart(self, name: str) -> None:
        self.start(name, *self.commands[name])


async def http_status(http: aiohttp.ClientSession, url: str) -> int | str:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__


# --- the web chat client -------------------------------------------------------------------


@dataclass
class WebChatLoad:
    """Visitors posting in order, retrying un-acknowledged posts, waiting for each reply."""

    port: int
    visitors: int
    per: int
    reply_timeout: float = 240.0
    #: (visitor, client id) in the order each visitor sent them, once accepted
    accepted: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    accepted_at: dict[str, float] = field(default_factory=dict)
    answered_at: dict[str, float] = field(default_factory=dict)
    #: POST outcomes: HTTP status or the exception name
    statuses: Counter[int | str] = field(default_factory=Counter)
    #: (monotonic time, status) of every POST, to read a fault window afterwards
    events: list[tuple[float, int | str]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unanswered_seen: int = 0
    #: seconds a visitor waits after each reply (to spread the load over a fault)
    pace: float = 0.0

    @property
    def total(self) -> int:
        return self.visitors * self.per

    async def run(self, on_accepted: Callable[[int], Awaitable[None]] | None = None) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{self.port}",
                                         connector=connector, timeout=timeout) as http:
            await asyncio.gather(*(self._converse(http, f"fault-{uuid.uuid4().hex[:20]}",
                                                  on_accepted) for _ in range(self.visitors)))

    async def _converse(self, http: aiohttp.ClientSession, visitor: str,
                        on_accepted: Callable[[int], Awaitable[None]] | None) -> None:
        cursor = 0
        mine = 0  # our messages seen in the transcript
        for i in range(self.per):
            client_id = f"m{i:05d}-{uuid.uuid4().hex[:12]}"
            body = {"visitor_id": visitor, "text": QUESTION, "client_message_id": client_id}
            if not await self._post(http, body):
                self.refused.append(f"{visitor}:{client_id}")
                continue
            self.accepted[visitor].append(client_id)
            self.accepted_at[client_id] = time.monotonic()
            if on_accepted is not None:
                await on_accepted(len(self.accepted_at))
            cursor, mine, answered = await self._wait_reply(http, visitor, cursor, mine)
            if answered:
                self.answered_at[client_id] = time.monotonic()
            else:
                self.unanswered_seen += 1
            await asyncio.sleep(self.pace)

    async def _post(self, http: aiohttp.ClientSession, body: dict[str, str]) -> bool:
        for attempt in range(400):
            try:
                async with http.post("/api/webchat/messages", json=body) as resp:
                    await resp.read()
                    status: int | str = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__
            self.statuses[status] += 1
            self.events.append((time.monotonic(), status))
            if status == 202:
                return True
            if isinstance(status, int) and 400 <= status < 500 and status != 429:
                return False  # a 4xx: the client gives up (reported)
            await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))  # same client id: deduplicated
        return False

    async def _wait_reply(self, http: aiohttp.ClientSession, visitor: str, cursor: int,
                          mine: int) -> tuple[int, int, bool]:
        """Read the transcript until our newest message and a reply after it are there."""
        deadline = time.monotonic() + self.reply_timeout
        last_is_reply = False
        while time.monotonic() < deadline:
            try:
                async with http.get("/api/webchat/messages", params={
                        "visitor_id": visitor, "after": str(cursor), "wait": "10"}) as resp:
                    if resp.status != 200:
                        await resp.read()
                        await asyncio.sleep(0.2)
                        continue
                    messages = (await resp.json())["messages"]
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.2)
                continue
            for m in messages:
                cursor = max(cursor, int(m["id"]))
                if m["from"] == "you":
                    mine += 1
                    last_is_reply = False
                else:
                    last_is_reply = True
            if last_is_reply and mine >= len(self.accepted[visitor]):
                return cursor, mine, True
        return cursor, mine, False

    async def transcripts(self) -> dict[str, list[str]]:
        """Each visitor's whole transcript as "you"/"bot", as the page would show it."""
        out: dict[str, list[str]] = {}
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{self.port}") as http:
            for visitor in self.accepted:
                after, seq = 0, []
                while True:
                    async with http.get("/api/webchat/messages", params={
                            "visitor_id": visitor, "after": str(after)}) as resp:
                        messages = (await resp.json())["messages"]
                    if not messages:
                        break
                    seq += ["you" if m["from"] == "you" else "bot" for m in messages]
                    after = int(messages[-1]["id"])
                out[visitor] = seq
        return out


def transcript_faults(transcripts: dict[str, list[str]]) -> tuple[int, int]:
    """(messages without a reply, extra replies) as the visitors see them."""
    missing = doubled = 0
    for seq in transcripts.values():
        replies = None
        for who in [*seq, "you"]:
            if who == "you":
                if replies == 0:
                    missing += 1
                elif replies is not None and replies > 1:
                    doubled += replies - 1
                replies = 0
            elif replies is not None:
                replies += 1
    return missing, doubled


# --- the audit ------------------------------------------------------------------------------


@dataclass
class Audit:
    accepted: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    unacknowledged_stored: int = 0
    failed_replies: int = 0
    not_done: int = 0
    notes: list[str] = field(default_factory=list)


async def settle(url: str, within: float) -> None:
    """Wait until the inbox and the outbox have nothing left to do (or `within` passes)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    deadline = time.monotonic() + within
    try:
        while True:
            async with engine.connect() as conn:
                left = (await conn.execute(text(
                    "SELECT (SELECT count(*) FROM inbox WHERE status IN ('pending', 'processing'))"
                    " + (SELECT count(*) FROM outbox WHERE status = 'pending')"))).scalar_one()
            if left == 0 or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


async def audit(url: str, channel: str, expected: dict[str, list[str]]) -> Audit:
    """Compare what was acknowledged (address -> external ids in the order sent) with the
    database: each stored once, answered once, in order."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT c.address, m.id, m.direction, m.external_id, m.status, "
                "m.meta ->> 'in_reply_to' AS reply_to FROM message m "
                "JOIN conversation c ON c.id = m.conversation_id "
                "WHERE c.channel = :channel ORDER BY m.id"), {"channel": channel})).all()
            not_done = (await conn.execute(text(
                "SELECT count(*) FROM inbox WHERE status <> 'done'"))).scalar_one()
    finally:
        await engine.dispose()
    stored: dict[str, list[int]] = defaultdict(list)
    replies: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for r in rows:
        if r.direction == "in":
            stored[r.external_id].append(r.id)
        elif r.direction == "out" and r.reply_to is not None:
            replies[int(r.reply_to)].append((r.id, r.status))
    a = Audit(not_done=int(not_done))
    wanted = {ext for exts in expected.values() for ext in exts}
    a.unacknowledged_stored = sum(1 for ext in stored if ext not in wanted)
    for exts in expected.values():
        last_in = last_out = 0
        for ext in exts:
            a.accepted += 1
            ids = stored.get(ext, [])
            if not ids:
                a.lost += 1
                continue
            a.duplicated += len(ids) - 1
            if ids[0] < last_in:
                a.out_of_order += 1
            last_in = ids[0]
            answers = [(i, s) for i, s in replies.get(ids[0], []) if s in ("sent", "delivered")]
            a.failed_replies += sum(1 for _, s in replies.get(ids[0], []) if s == "failed")
            if not answers:
                a.lost += 1
                continue
            a.duplicated += len(answers) - 1
            if answers[0][0] < last_out:
                a.out_of_order += 1
            last_out = answers[0][0]
    return a


# --- results ------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    accepted: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    recovery: str = ""
    seconds: float = 0.0
    lines: list[str] = field(default_factory=list)
    skipped: str = ""
    #: other outcomes that must not happen (e.g. a reply recorded as failed but delivered)
    bugs: int = 0

    @property
    def ok(self) -> bool:
        return not self.skipped and self.lost == self.duplicated == self.out_of_order == \
            self.bugs == 0


def recovery_after(load: WebChatLoad, fault_at: float) -> tuple[float, float]:
    """(seconds until a post was acknowledged again, seconds until every message accepted
    before the fault was answered), as the client saw it."""
    back = min((t for t, s in load.events if t >= fault_at and s == 202), default=float("nan"))
    before = [c for c, t in load.accepted_at.items() if t < fault_at]
    caught = max((load.answered_at.get(c, float("nan")) for c in before), default=fault_at)
    return back - fault_at, max(caught - fault_at, 0.0)


def fill_from_audit(result: Result, a: Audit) -> None:
    result.accepted += a.accepted
    result.lost += a.lost
    result.duplicated += a.duplicated
    result.out_of_order += a.out_of_order
    if a.not_done:
        result.lines.append(f"{a.not_done} inbox row(s) not done (dead-lettered or stuck)")
    if a.failed_replies:
        result.lines.append(f"{a.failed_replies} reply row(s) recorded as failed")
    if a.unacknowledged_stored:
        result.lines.append(f"{a.unacknowledged_stored} message(s) stored that were never "
                            "acknowledged (fine: their posts were refused or not retried)")


# --- scenario: SIGKILL ----------------------------------------------------------------------


async def kill_run(result: Result, procs: Processes, url: str, port: int, load: WebChatLoad,
                   kills: int, victims: Sequence[str], rng: random.Random) -> None:
    """Run `load`, killing one of `victims` (SIGKILL) at `kills` random points of it."""
    marks = sorted(rng.uniform(0.1, 0.85) * load.total for _ in range(kills))
    order = list(victims)[:kills] + [rng.choice(list(victims)) for _ in range(kills - len(victims))]
    rng.shuffle(order)  # each process is killed at least once when there are enough kills
    faults: list[tuple[str, float, float]] = []  # (victim, killed at, ready again after)
    busy = asyncio.Lock()

    async def maybe_kill(accepted: int) -> None:
        if not marks or accepted < marks[0] or busy.locked():
            return
        marks.pop(0)
        async with busy:
            victim = order.pop()
            await asyncio.to_thread(procs.kill, victim)
            at = time.monotonic()  # dead now: any 2xx from here on came after the restart
            procs.restart(victim)
            say(f"  SIGKILL {victim} at {accepted}/{load.total} accepted; restarted")
            asyncio.get_running_loop().create_task(note_ready(victim, at))

    async def note_ready(victim: str, at: float) -> None:
        """How long the web process took to be ready again (a worker: not measured)."""
        ready = float("nan")
        if victim in ("serve", "web"):
            async with aiohttp.ClientSession() as http:
                while await http_status(http, f"http://127.0.0.1:{port}/readyz") != 200:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            ready = time.monotonic() - at
        faults.append((victim, at, ready))

    async def progress() -> None:
        while True:
            await asyncio.sleep(10)
            say(f"  {len(load.accepted_at)}/{load.total} accepted, {len(load.answered_at)} "
                f"answered, posts: {dict(load.statuses)}")

    ticker = asyncio.create_task(progress())
    try:
        await load.run(on_accepted=maybe_kill)
    finally:
        ticker.cancel()
    await procs.wait_ready()
    say(f"  load done: {len(load.accepted_at)} accepted, {len(load.answered_at)} replies read "
        "back; waiting for the queue to drain")
    await settle(url, within=120)
    a = await audit(url, "webchat", {v: [f"{v}:{c}" for c in cs]
                                     for v, cs in load.accepted.items()})
    fill_from_audit(result, a)
    missing, doubled = transcript_faults(await load.transcripts())
    result.lines.append(f"client view: {load.unanswered_seen} accepted without a reply read "
                        f"back in {load.reply_timeout:g} s; final transcripts: {missing} "
                        f"without a reply, {doubled} extra replies")
    result.lines.append(f"POST outcomes: {dict(load.statuses)}; refused (4xx): "
                        f"{len(load.refused)}")
    result.lost += len(load.refused)
    parts = []
    for victim, at, ready in sorted(faults, key=lambda f: f[1]):
        back, caught = recovery_after(load, at)
        parts.append(f"{victim}: " + (f"ready {ready:.1f}s, " if ready == ready else "")
                     + f"back {back:.1f}s, caught up {caught:.1f}s")
        result.lines.append(f"SIGKILL of {parts[-1]}")
    result.recovery = (f"{len(faults)} kills, worst caught up "
                       f"{max((recovery_after(load, f[1])[1] for f in faults), default=0):.1f}s")


async def scenario_kill_sqlite(args: argparse.Namespace, result: Result) -> None:
    logs = args.logs / "kill-sqlite"
    logs.mkdir(parents=True, exist_ok=True)
    db = logs / f"faults-{uuid.uuid4().hex[:6]}.db"
    url = f"sqlite+aiosqlite:///{db}"
    port = free_port()
    procs = Processes(base_env(url, port, WORKERS="4"), port, logs=logs)
    visitors = args.conversations
    load = WebChatLoad(port, visitors, max(1, args.messages // visitors))
    say(f"kill-sqlite: serve on {db.name}, {load.total} messages from {visitors} visitors, "
        f"{args.kills} SIGKILLs")
    procs.start("serve", "serve")
    try:
        await procs.wait_ready()
        await kill_run(result, procs, url, port, load, args.kills, ["serve"],
                       random.Random(args.seed))
    finally:
        procs.stop()


async def scenario_kill_cluster(args: argparse.Namespace, result: Result) -> None:
    logs = args.logs / "kill-cluster"
    logs.mkdir(parents=True, exist_ok=True)
    async with pg_database() as url:
        port = free_port()
        env = base_env(url, port, REDIS_URL=REDIS, WORKERS="4",
                       REDIS_PREFIX=f"faults-{uuid.uuid4().hex[:8]}",
                       REDIS_RECLAIM_SECONDS="3", LEADER_TTL_SECONDS="3")
        await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "bot", "db", "upgrade"],
                                cwd=ROOT, env=env, check=True, capture_output=True)
        procs = Processes(env, port, logs=logs)
        visitors = args.conversations
        load = WebChatLoad(port, visitors, max(1, args.messages // visitors))
        say(f"kill-cluster: web + 2 workers on PostgreSQL + Redis, {load.total} messages from "
            f"{visitors} visitors, {args.kills} SIGKILLs of web or a worker")
        procs.start("web", "web")
        procs.start("worker1", "worker")
        procs.start("worker2", "worker")
        try:
            await procs.wait_ready()
            await asyncio.sleep(1.0)  # workers connect
            await kill_run(result, procs, url, port, load, args.kills,
                           ["web", "worker1", "worker2"], random.Random(args.seed))
            from redis.asyncio import Redis

            redis = Redis.from_url(REDIS, decode_responses=True)
            stream = f"{env['REDIS_PREFIX']}:inbox"
            deadline = time.monotonic() + 30  # a dead worker's entries: reclaimed, acknowledged
            try:
                while True:
                    pending = (await redis.xpending(stream, "workers"))["pending"]
                    length = await redis.xlen(stream)
                    if (pending, length) == (0, 0) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.5)
            finally:
                await redis.aclose()
            result.lines.append(f"Redis stream after the run: {length} entries, {pending} "
                                "pending" + ("" if (pending, length) == (0, 0) else
                                             " (still there after 30 s)"))
        finally:
            procs.stop()


# --- scenario: read-only database -----------------------------------------------------------


@dataclass
class TelegramLoad:
    """Chats each sending updates in order, each re-posted until a 2xx, as Telegram does."""

    port: int
    chats: int
    per: int
    first_update: int = 10_000
    accepted: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    accepted_at: dict[str, float] = field(default_factory=dict)
    statuses: Counter[int | str] = field(default_factory=Counter)
    events: list[tuple[float, int | str]] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    pace: float = 0.0

    async def run(self) -> None:
        from tests.fakes.telegram import SECRET, message_update

        url = f"http://127.0.0.1:{self.port}/webhooks/telegram"
        headers = {"Content-Type": "application/json",
                   "X-Telegram-Bot-Api-Secret-Token": SECRET}
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def chat(c: int) -> None:
                chat_id = 5_000_000 + c
                for i in range(self.per):
                    update_id = self.first_update + c * self.per + i
                    body = json.dumps(message_update(update_id, QUESTION, chat_id=chat_id,
                                                     user_id=chat_id))
                    for attempt in range(1000):
                        try:
                            async with http.post(url, data=body, headers=headers) as resp:
                                await resp.read()
                                status: int | str = resp.status
                        except (aiohttp.ClientError, TimeoutError) as exc:
                            status = type(exc).__name__
                        self.statuses[status] += 1
                        self.events.append((time.monotonic(), status))
                        if isinstance(status, int) and 200 <= status < 300:
                            self.accepted[str(chat_id)].append(str(update_id))
                            self.accepted_at[str(update_id)] = time.time()
                            break
                        if isinstance(status, int) and 400 <= status < 500:
                            self.refused.append(update_id)
                            break
                        await asyncio.sleep(min(0.2 * (attempt + 1), 1.0))
                    await asyncio.sleep(self.pace)

            await asyncio.gather(*(chat(c) for c in range(self.chats)))


def chattr(flag: str, path: Path) -> str | None:
    """None, or why `chattr` could not be used."""
    try:
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit {done.returncode}")


async def scenario_readonly_db(args: argparse.Namespace, result: Result) -> None:
    from tests.fakes.telegram import SECRET, TOKEN, fake_telegram

    logs = args.logs / "readonly-db"
    logs.mkdir(parents=True, exist_ok=True)
    db = logs / f"faults-{uuid.uuid4().hex[:6]}.db"
    wal = Path(f"{db}-wal")
    url = f"sqlite+aiosqlite:///{db}"
    port = free_port()
    async with fake_telegram() as fake:
        env = base_env(url, port, WORKERS="4", TELEGRAM_TOKEN=TOKEN,
                       TELEGRAM_WEBHOOK_SECRET=SECRET, TELEGRAM_API_BASE=fake.url)
        procs = Processes(env, port, logs=logs)
        chats = max(1, args.conversations // 2)
        per = max(1, args.messages // 2 // chats)
        tg = TelegramLoad(port, chats, per, pace=args.fault_seconds * 3 / per)
        web = WebChatLoad(port, chats, per, pace=tg.pace)
        say(f"readonly-db: serve on {db.name}; {chats * per} Telegram webhooks from {chats} "
            f"chats and {chats * per} web chat messages from {chats} visitors, spread over "
            f"~{args.fault_seconds * 3:g} s; the WAL is immutable for {args.fault_seconds:g} s")
        procs.start("serve", "serve")
        try:
            await procs.wait_ready()
            if not await asyncio.to_thread(wal.exists):
                result.skipped = f"{wal.name} does not exist (not in WAL mode?)"
                return
            probe = chattr("+i", wal)
            if probe is not None:
                result.skipped = f"chattr +i failed ({probe}); needs root on ext4/xfs/btrfs"
                return
            chattr("-i", wal)
            ready: list[tuple[float, int | str]] = []
            loads = asyncio.gather(tg.run(), web.run())

            async def watch_ready() -> None:
                async with aiohttp.ClientSession() as http:
                    while True:
                        ready.append((time.monotonic(), await http_status(
                            http, f"http://127.0.0.1:{port}/readyz")))
                        await asyncio.sleep(0.25)

            watcher = asyncio.create_task(watch_ready())
            try:
                await asyncio.sleep(args.fault_seconds)
                say(f"  chattr +i {wal.name} ({sum(len(v) for v in tg.accepted.values())} "
                    f"webhooks and {len(web.accepted_at)} web chat messages accepted so far)")
                fault_at = time.monotonic()
                chattr("+i", wal)
                try:
                    await asyncio.sleep(args.fault_seconds)
                finally:
                    err = chattr("-i", wal)
                    fixed_at = time.monotonic()
                    say(f"  chattr -i {wal.name}" + (f" FAILED: {err}" if err else ""))
                await loads
            finally:
                watcher.cancel()
            await settle(url, within=120)
            alive = procs.procs["serve"].poll() is None
            say(f"  load done; serve {'still running (no restart)' if alive else 'EXITED'}")
            if not alive:
                result.lines.append("serve exited during the fault: it needed a restart")
                result.lost += 1

            def window(events: list[tuple[float, int | str]]) -> Counter[str]:
                return Counter(_bucket(s) for t, s in events if fault_at <= t < fixed_at)

            tg_win, web_win = window(tg.events), window(web.events)
            ready_win = Counter(str(s) for t, s in ready if fault_at + 0.5 <= t < fixed_at)
            back = min((t for t, s in ready if t >= fixed_at and s == 200), default=float("nan"))
            first_2xx = min((t for t, s in tg.events + web.events
                             if t >= fixed_at and isinstance(s, int) and s < 300),
                            default=float("nan"))
            result.lines.append(f"during the fault: Telegram webhooks {dict(tg_win)}, web chat "
                                f"posts {dict(web_win)}, /readyz {dict(ready_win)}")
            bad_4xx = tg_win.get("4xx", 0) + web_win.get("4xx", 0)
            if bad_4xx:
                result.bugs += bad_4xx
                result.lines.append(f"BUG: {bad_4xx} 4xx during the fault (the platform would "
                                    "not retry)")
            result.recovery = (f"readyz 200 {back - fixed_at:.1f}s and first 2xx "
                               f"{first_2xx - fixed_at:.1f}s after chattr -i, no restart")

            a = await audit(url, "telegram", tg.accepted)
            fill_from_audit(result, a)
            result.lines.append(f"Telegram: {a.accepted} accepted, {a.lost} lost, "
                                f"{a.duplicated} duplicated, {a.out_of_order} out of order; "
                                f"webhook outcomes {dict(tg.statuses)}")
            sends = Counter(int(p["chat_id"]) for p in fake.sent_messages())
            platform_missing = sum(max(0, len(v) - sends.get(int(k), 0))
                                   for k, v in tg.accepted.items())
            platform_extra = sum(max(0, sends.get(int(k), 0) - len(v))
                                 for k, v in tg.accepted.items())
            result.lines.append(f"Telegram platform: {sum(sends.values())} replies received, "
                                f"{platform_missing} missing, {platform_extra} extra")
            result.lost += platform_missing
            result.duplicated += platform_extra
            w = await audit(url, "webchat", {v: [f"{v}:{c}" for c in cs]
                                             for v, cs in web.accepted.items()})
            fill_from_audit(result, w)
            result.lines.append(f"web chat: {w.accepted} accepted, {w.lost} lost, "
                                f"{w.duplicated} duplicated, {w.out_of_order} out of order; "
                                f"post outcomes {dict(web.statuses)}")
            result.lost += len(tg.refused) + len(web.refused)
        finally:
            with contextlib.suppress(Exception):
                chattr("-i", wal)
            procs.stop()


def _percentiles(values: Sequence[float]) -> str:
    if not values:
        return "-"
    pick = [values[min(len(values) - 1, int(len(values) * q))] for q in (0.5, 0.9, 0.99)]
    return (f"p50 {pick[0]:.1f}s p90 {pick[1]:.1f}s p99 {pick[2]:.1f}s "
            f"max {values[-1]:.1f}s")


def _bucket(status: int | str) -> str:
    return f"{status // 100}xx" if isinstance(status, int) else status


# --- scenario: channel API errors -----------------------------------------------------------


async def scenario_channel_errors(args: argparse.Namespace, result: Result) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from tests.fakes.telegram import SECRET, TOKEN, fake_telegram

    logs = args.logs / "channel-errors"
    logs.mkdir(parents=True, exist_ok=True)
    db = logs / f"faults-{uuid.uuid4().hex[:6]}.db"
    url = f"sqlite+aiosqlite:///{db}"
    port = free_port()
    rates = {"rate_limited": 0.30, "5xx": 0.10, "hang": 0.025, "late": 0.025}
    async with fake_telegram() as fake:
        fake.set_chaos(seed=args.seed, late_seconds=args.send_timeout + 3, **rates)
        env = base_env(url, port, WORKERS="4", TELEGRAM_TOKEN=TOKEN,
                       TELEGRAM_WEBHOOK_SECRET=SECRET, TELEGRAM_API_BASE=fake.url,
                       SEND_TIMEOUT=str(args.send_timeout))
        if args.send_max_attempts is not None:
            env["SEND_MAX_ATTEMPTS"] = str(args.send_max_attempts)
        max_attempts = env.get("SEND_MAX_ATTEMPTS", "default")
        procs = Processes(env, port, logs=logs)
        n = args.messages
        say(f"channel-errors: serve on {db.name}; one message from each of {n} Telegram chats; "
            f"the fake API answers sends with {rates} (late = accepted, answered after "
            f"{fake.late_seconds:g} s); SEND_TIMEOUT={args.send_timeout:g}, "
            f"SEND_MAX_ATTEMPTS={max_attempts}")
        procs.start("serve", "serve")
        try:
            await procs.wait_ready()
            tg = TelegramLoad(port, n, 1)
            started = time.monotonic()
            await tg.run()
            say(f"  {sum(len(v) for v in tg.accepted.values())} webhooks accepted; waiting for "
                "the outbox")
            engine = create_async_engine(url)
            try:
                while True:
                    async with engine.connect() as conn:
                        left = (await conn.execute(text(
                            "SELECT count(*) FROM outbox WHERE status = 'pending'"))).scalar_one()
                        handled = (await conn.execute(text(
                            "SELECT count(*) FROM inbox WHERE status = 'done'"))).scalar_one()
                    delivered = len({int(p["chat_id"]) for p in fake.sent_messages()})
                    say(f"  {handled}/{n} handled, {delivered} chats have their reply, "
                        f"{left} replies pending; platform saw {dict(fake.outcomes)}")
                    if handled >= n and left == 0:
                        break
                    if time.monotonic() - started > args.settle_seconds:
                        result.lines.append(f"gave up waiting: {left} replies still pending")
                        break
                    await asyncio.sleep(5)
                elapsed = time.monotonic() - started
                await asyncio.sleep(fake.late_seconds + 1)  # late sends finish being accepted
                async with engine.connect() as conn:
                    rows = (await conn.execute(text(
                        "SELECT c.address, m.status, m.created_at, o.attempts, o.last_error "
                        "FROM message m "
                        "JOIN conversation c ON c.id = m.conversation_id "
                        "JOIN outbox o ON o.message_id = m.id "
                        "WHERE m.direction = 'out' AND c.channel = 'telegram'"))).all()
            finally:
                await engine.dispose()
            a = await audit(url, "telegram", tg.accepted)
            _deliveries(result, a, tg, fake, rows, elapsed)
        finally:
            procs.stop()


def _deliveries(result: Result, a: Audit, tg: TelegramLoad, fake: Any, rows: Sequence[Any],
                elapsed: float) -> None:
    """What the platform received against what the database says was sent."""
    sends = Counter(int(p["chat_id"]) for p in fake.sent_messages())
    by_chat: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        by_chat[int(r.address)].append(r)
    once = twice = copies = never = failed_delivered = sent_undelivered = 0
    for chat in (int(c) for c in tg.accepted):
        got, recorded = sends.get(chat, 0), by_chat.get(chat, [])
        want = len(recorded)  # one reply per chat, each chat sent one message
        if got <= want:
            never += want - got
            once += got
        elif want:
            once += want - 1
            twice += 1
            copies += got - want
        failed = [r for r in recorded if r.status == "failed"]
        if failed and got:
            failed_delivered += len(failed)
        if got == 0 and any(r.status in ("sent", "delivered") for r in recorded):
            sent_undelivered += 1
    replies_per_msg = Counter(len(v) for v in by_chat.values())
    first_at: dict[int, float] = {}
    for p in fake.sent_messages():
        first_at.setdefault(int(p["chat_id"]), float(p["_at"]))
    first_try = {int(r.address) for r in rows if r.attempts == 1}
    lat_all = sorted(first_at[int(c)] - tg.accepted_at[u[0]]
                     for c, u in tg.accepted.items() if int(c) in first_at)
    outbox_all = sorted(first_at[int(r.address)] - _secs(r.created_at) for r in rows
                        if int(r.address) in first_at)
    outbox_first = sorted(first_at[int(r.address)] - _secs(r.created_at) for r in rows
                          if int(r.address) in first_at and int(r.address) in first_try)
    result.accepted = a.accepted
    result.lost = never + len(tg.refused) + max(0, a.accepted - len(rows))
    result.duplicated = a.duplicated  # stored or answered twice in the database
    result.out_of_order = a.out_of_order
    result.recovery = f"all replies settled in {elapsed:.1f}s"
    attempts = Counter(int(r.attempts) for r in rows)
    result.lines += [
        f"platform: {sum(sends.values())} accepted sends for {len(rows)} replies: "
        f"delivered once {once}, twice or more {twice} ({copies} extra copies, after a "
        f"timeout retry), never {never}",
        f"recorded as failed but delivered: {failed_delivered}; recorded as sent but "
        f"never delivered: {sent_undelivered}",
        f"sendMessage outcomes at the fake: {dict(fake.outcomes)}",
        f"attempts per reply: {dict(sorted(attempts.items()))}; replies per message: "
        f"{dict(replies_per_msg)}",
        f"webhook 200 -> the platform has the reply: {_percentiles(lat_all)}",
        f"reply queued -> the platform has it: all {_percentiles(outbox_all)}; sent on "
        f"the first try ({len(outbox_first)}): {_percentiles(outbox_first)}",
    ]
    result.lost += sent_undelivered
    if failed_delivered:
        result.bugs += failed_delivered
        result.recovery += f"; {failed_delivered} recorded as failed but delivered"
        result.lines.append(f"BUG: {failed_delivered} replies recorded as failed were "
                            "delivered")
    failed_rows = [r for r in rows if r.status == "failed"]
    for r in failed_rows[:5]:
        result.lines.append(f"failed reply to chat {r.address}: {r.last_error}")


# --- main -----------------------------------------------------------------------------------


RUNNERS = {"kill-sqlite": scenario_kill_sqlite, "kill-cluster": scenario_kill_cluster,
           "readonly-db": scenario_readonly_db, "channel-errors": scenario_channel_errors}


def print_table(results: Sequence[Result]) -> None:
    print()
    print(f"{'scenario':<15} {'accepted':>8} {'lost':>5} {'dup':>5} {'order':>5} {'secs':>6}  "
          "recovery")
    for r in results:
        if r.skipped:
            print(f"{r.scenario:<15} skipped: {r.skipped}")
            continue
        print(f"{r.scenario:<15} {r.accepted:>8} {r.lost:>5} {r.duplicated:>5} "
              f"{r.out_of_order:>5} {r.seconds:>6.0f}  {r.recovery}")
    print()
    for r in results:
        if r.lines:
            print(f"{r.scenario}:")
            for line in r.lines:
                print(f"  {line}")


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--quick", action="store_true", help="a short run (fewer messages)")
    parser.add_argument("--messages", type=int, default=None,
                        help="messages per scenario (default 5000, --quick 400; channel-errors "
                             "1000 replies, --quick 200)")
    parser.add_argument("--conversations", type=int, default=None,
                        help="concurrent visitors (default 40, --quick 20)")
    parser.add_argument("--kills", type=int, default=None, help="SIGKILLs (default 5, quick 3)")
    parser.add_argument("--fault-seconds", type=float, default=None,
                        help="how long the database stays read-only (default 6, quick 4)")
    parser.add_argument("--send-timeout", type=float, default=2.0,
                        help="SEND_TIMEOUT for channel-errors (the platform's 'late' answers "
                             "come 3 s after it)")
    parser.add_argument("--send-max-attempts", type=int, default=None,
                        help="SEND_MAX_ATTEMPTS for channel-errors (default: the product's)")
    parser.add_argument("--settle-seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--logs", type=Path, default=Path("/tmp/storedesk-faults"))
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in RUNNERS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    args.logs.mkdir(parents=True, exist_ok=True)
    say(f"seed {args.seed}; logs in {args.logs}")
    results = []
    for name in chosen:
        a = argparse.Namespace(**vars(args))
        default_messages = (200 if args.quick else 1000) if name == "channel-errors" else \
            (400 if args.quick else 5000)
        a.messages = args.messages or default_messages
        a.conversations = args.conversations or (20 if args.quick else 40)
        a.kills = args.kills if args.kills is not None else (3 if args.quick else 5)
        a.fault_seconds = args.fault_seconds or (4.0 if args.quick else 6.0)
        result = Result(name)
        for old in (args.logs / name).glob("*"):  # the previous run's logs and databases
            if old.name.endswith((".log", ".db", ".db-wal", ".db-shm")):
                old.unlink()
        started = time.monotonic()
        try:
            await RUNNERS[name](a, result)
        except Exception as exc:  # reported in the table; the other scenarios still run
            result.skipped = f"error: {type(exc).__name__}: {exc}"
            say(f"{name} failed: {exc!r}")
        result.seconds = time.monotonic() - started
        results.append(result)
        if not result.skipped:
            say(f"{name}: {result.accepted} accepted, {result.lost} lost, {result.duplicated} "
                f"duplicated, {result.out_of_order} out of order; {result.recovery}")
    print_table(results)
    failed = [r for r in results if r.skipped.startswith("error") or not (r.skipped or r.ok)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

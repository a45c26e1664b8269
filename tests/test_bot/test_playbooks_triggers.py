"""Each trigger over HTTP against the real service: a stage entered (a web chat message that
gives the customer a stage), an abandoned checkout (and one completed in time), a lapse of N
days without an order, and a satisfaction answer of 4 or more."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from sqlalchemy import insert, select

from bot.db.models import Consent, Conversation, Escalation
from core.clock import FrozenClock
from tests.conftest import ADMIN_TOKEN, chat, eventually, stays, transcript
from tests.fakes.email import SmtpSink, smtp_sink
from tests.test_bot.playbook_helpers import (
    NOW,
    Start,
    clock,
    jobs,
    post_order,
    start_shop,
)
from tests.test_bot.test_cli_errors import one_line_error, run

__all__ = ["clock", "start_shop"]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def book(name: str, trigger: str, text: str, delay: str = "0s") -> str:
    return f"""\
  - name: {name}
    trigger: {trigger}
    steps:
      - delay: {delay}
        kind: transactional
        message: {{en: "{text}", it: "{text}", th: "{text}"}}
"""


@pytest.fixture
def sink() -> Iterator[tuple[SmtpSink, int]]:
    with smtp_sink() as found:
        yield found


async def visitor_customer(shop: Any, visitor: str) -> int:
    cv = Conversation.__table__.c
    async with shop.db.read() as conn:
        return int((await conn.execute(select(cv.customer_id).where(cv.address == visitor)
                                       )).scalar_one())


async def test_a_stage_entered_and_a_happy_rating_reach_the_web_chat(
        start_shop: Start, clock: FrozenClock) -> None:
    shop = await start_shop("playbooks:\n"
                            + book("hello", "{stage_entered: awareness}", "Welcome, $name!")
                            + book("review", "{csat: {min: 4}}", "Thanks! A review?", "1h"))
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{shop.port}") as http:
        visitor, _ = await chat(http, "hello", name="Ann")
        welcome = await eventually(
            lambda: _from_playbook(http, visitor), what="the welcome in the transcript")
        # the name typed into the chat greets this visitor (it is never the name on record)
        assert [m["text"] for m in welcome] == ["Welcome, Ann!"]

        customer = await visitor_customer(shop, visitor)
        conversation = (await jobs(shop, "hello"))[0].conversation_id
        async with shop.db.write() as conn:  # two resolved escalations, rated 2 and 5
            for csat in (2, 5):
                await conn.execute(insert(Escalation.__table__).values(
                    conversation_id=conversation, reason="no_match", status="resolved",
                    csat=csat, created_at=NOW, resolved_at=NOW))
        review = await eventually(lambda: jobs(shop, "review"), what="the rating noticed")
        assert [(r.customer_id, r.state) for r in review] == [(customer, "scheduled")]
        clock.advance(timedelta(hours=1, seconds=1))
        await eventually(lambda: _sent(shop, "review"), what="the review request")
        texts = [m["text"] for m in await _from_playbook(http, visitor)]
        assert texts == ["Welcome, Ann!", "Thanks! A review?"]
    await stays(lambda: _count(shop, "review", 1), window=0.3, what="one per rating")


async def test_an_abandoned_checkout_is_mailed_and_a_completed_one_is_not(
        start_shop: Start, sink: tuple[SmtpSink, int], clock: FrozenClock) -> None:
    mails, port = sink
    shop = await start_shop(
        "playbooks:\n" + book("cart", "checkout_abandoned", "Your cart: $checkout_url", "1h"),
        smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none",
        email_from="Demo Shop <shop@demo.test>")
    for token, email in (("c-left", "left@example.com"), ("c-done", "done@example.com")):
        await post_order(shop, {"id": 1, "token": token, "email": email, "total_price": "20",
                                "abandoned_checkout_url": f"https://demo.test/cart/{token}",
                                "created_at": NOW.isoformat()},
                         "checkouts/create", f"wh-{token}")
    await post_order(shop, {"id": 1, "token": "c-done", "email": "done@example.com",
                            "completed_at": NOW.isoformat(), "updated_at": NOW.isoformat()},
                     "checkouts/update", "wh-c-done-2")
    clock.advance(timedelta(hours=1, seconds=1))
    rows = await eventually(lambda: _all_decided(shop, 2), what="both checkouts decided")
    assert sorted((r.state, r.reason) for r in rows) == [
        ("cancelled", "the checkout was completed"), ("sent", None)]
    mail = (await eventually(lambda: mails.messages, what="the cart mail"))[0]
    assert mail["To"] == "left@example.com"
    plain = mail.get_body(preferencelist=("plain",))
    assert plain is not None and "Your cart: https://demo.test/cart/c-left" in plain.get_content()


async def test_no_order_for_n_days_fires_once_per_lapse(
        start_shop: Start, sink: tuple[SmtpSink, int], clock: FrozenClock) -> None:
    mails, port = sink
    shop = await start_shop(
        "playbooks:\n" + book("miss_you", "{no_order_for: 90d}", "We miss you, $name"),
        smtp_host="127.0.0.1", smtp_port=port, smtp_tls="none",
        email_from="Demo Shop <shop@demo.test>")
    body = {"email": "ann@example.com", "name": "Ann Lee", "orders": [
        {"order_id": "A-1", "total": 30, "placed_at": (NOW - timedelta(days=80)).isoformat()}]}
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{shop.port}") as http, \
            http.post("/api/orders", json=body, headers=ADMIN) as resp:
        assert resp.status == 200
    await stays(lambda: _count(shop, "miss_you", 0), window=0.3, what="80 days is not 90")
    clock.advance(timedelta(days=10, seconds=1))
    await eventually(lambda: _sent(shop, "miss_you"), what="the win-back")
    mail = (await eventually(lambda: mails.messages, what="the mail"))[0]
    assert "We miss you, Ann" in str(mail.get_body(preferencelist=("plain",)).get_content())
    clock.advance(timedelta(days=1))
    await stays(lambda: _count(shop, "miss_you", 1), window=0.4, what="once per lapse")


async def _from_playbook(http: aiohttp.ClientSession, visitor: str) -> list[dict[str, Any]]:
    return [m for m in await transcript(http, visitor) if m["from"] == "playbook"]


async def _sent(shop: Any, playbook: str) -> bool:
    return any(r.state == "sent" for r in await jobs(shop, playbook))


async def _count(shop: Any, playbook: str, count: int) -> bool:
    return len(await jobs(shop, playbook)) == count


async def _all_decided(shop: Any, count: int) -> list[Any] | None:
    rows = await jobs(shop)
    return rows if len(rows) == count and all(r.state != "scheduled" for r in rows) else None





@pytest.mark.postgres
async def test_two_processes_on_postgresql_send_each_step_once(
        start_shop: Start, clock: FrozenClock, pg_database_url: str) -> None:
    books = "playbooks:\n" + book("points", "points_expiring", "Your $points points", "30s")
    first = await start_shop(books, database_url=pg_database_url)
    second = await start_shop(books, database_url=pg_database_url)
    visitors = []
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{first.port}") as http:
        for i in range(8):
            visitor, _ = await chat(http, f"hello {i}")
            visitors.append(visitor)
            event = {"customer_id": await visitor_customer(first, visitor),
                     "event": "points_expiring", "id": "march", "variables": {"points": i}}
            async with http.post("/api/playbooks/events", json=event, headers=ADMIN) as resp:
                assert resp.status == 200
    ticks = (first.playbook_runner.ticks, second.playbook_runner.ticks)
    clock.advance(timedelta(seconds=31))
    await eventually(lambda: _all_decided(first, 8), what="every step decided")
    await eventually(lambda: first.playbook_runner.ticks > ticks[0] + 2
                     and second.playbook_runner.ticks > ticks[1] + 2, what="both ran")
    rows = await jobs(first)
    assert [r.state for r in rows] == ["sent"] * 8
    assert len({r.message_id for r in rows}) == 8
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{second.port}") as http:
        for i, visitor in enumerate(visitors):
            assert [m["text"] for m in await _from_playbook(http, visitor)] == [
                f"Your {i} points"]


async def test_an_opt_in_recorded_by_the_cli_lets_marketing_through(
        start_shop: Start, clock: FrozenClock, tmp_path: Any) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    books = ("playbooks:\n" + book("points", "points_expiring", "Your $points points", "30s")
             .replace("transactional", "marketing"))
    shop = await start_shop(books, database_url=database)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{shop.port}") as http:
        visitor, _ = await chat(http, "hello")
        customer = await visitor_customer(shop, visitor)

        async def event(key: str) -> None:
            body = {"customer_id": customer, "event": "points_expiring", "id": key,
                    "variables": {"points": 50}}
            async with http.post("/api/playbooks/events", json=body, headers=ADMIN) as resp:
                assert resp.status == 200

        await event("before")
        clock.advance(timedelta(seconds=31))
        rows = await eventually(lambda: _all_decided(shop, 1), what="the first step decided")
        assert rows[0].reason == "no marketing opt-in on webchat"

        done = await asyncio.to_thread(
            run, "customer", "opt-in", str(customer), "--channel", "webchat", "--source",
            "signup form", DATABASE_URL=database)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"customer {customer}: opt-in on webchat recorded" in done.stdout
        missing = await asyncio.to_thread(
            run, "customer", "opt-in", "999", "--channel", "webchat", "--source", "x",
            DATABASE_URL=database)
        assert "customer 999 does not exist" in one_line_error(missing)

        await event("after")
        clock.advance(timedelta(seconds=31))
        await eventually(lambda: _all_decided(shop, 2), what="the second step decided")
        assert [m["text"] for m in await _from_playbook(http, visitor)] == ["Your 50 points"]
    async with shop.db.read() as conn:
        row = (await conn.execute(select(Consent.__table__))).one()
    assert (row.channel, row.opt_in_source) == ("webchat", "signup form")


async def test_the_playbooks_file_is_reloaded_and_a_broken_edit_keeps_the_last_good_one(
        start_shop: Start, tmp_path: Any) -> None:
    shop = await start_shop("playbooks:\n" + book("one", "points_expiring", "one"))
    path = tmp_path / "playbooks.yaml"
    path.write_text("playbooks:\n" + book("one", "points_expiring", "one", "soon"),
                    encoding="utf-8")
    await eventually(lambda: shop.playbooks.last_error, what="the broken edit noticed")
    assert shop.playbooks.last_error is not None and shop.playbooks.last_error.line == 5
    assert shop.playbooks.playbooks.get("one") is not None
    path.write_text("playbooks:\n" + book("two", "points_expiring", "two"), encoding="utf-8")
    await eventually(lambda: shop.playbooks.playbooks.get("two"), what="the fix picked up")
    assert shop.playbooks.last_error is None


async def test_the_lapse_sweep_walks_customers_with_the_same_last_order_time(
        tmp_path: Any) -> None:
    from bot.db.engine import Database
    from bot.db.models import Customer
    from bot.playbook_jobs import sweep_lapsed
    from bot.playbooks import load_playbooks

    path = tmp_path / "p.yaml"
    path.write_text("playbooks:\n" + book("miss_you", "{no_order_for: 90d}", "x"),
                    encoding="utf-8")
    books = load_playbooks(path)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'lapse.db'}")
    await db.upgrade()
    try:
        async with db.write() as conn:  # an import: five customers, one order date
            await conn.execute(insert(Customer.__table__), [
                {"display_name": f"c{i}", "orders_count": 1, "total_spent": 1.0,
                 "last_order_at": NOW - timedelta(days=91), "created_at": NOW}
                for i in range(5)])
        cursor: dict[Any, Any] = {}
        fired = []
        for _ in range(4):
            fired.append(await sweep_lapsed(db, books, now=NOW, since=cursor, batch=2))
    finally:
        await db.close()
    assert fired == [2, 2, 1, 0]


async def test_a_sweep_that_finds_hundreds_of_stage_changes_lets_the_service_serve_meanwhile(
        tmp_path: Any) -> None:
    """A busy quarter of a minute (a thousand new customers) gives the next sweep hundreds of
    occurrences: it schedules each once, in short transactions, and the event loop serves
    between them instead of standing still until the last one is written."""
    import sqlite3

    from bot.db.engine import Database
    from bot.db.models import Customer, PlaybookJob, StageChange
    from bot.playbook_jobs import sweep_stage_changes
    from bot.playbooks import load_playbooks

    path = tmp_path / "p.yaml"
    path.write_text("playbooks:\n" + book("hello", "{stage_entered: consideration}", "Hi"),
                    encoding="utf-8")
    books = load_playbooks(path)
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'sweep.db'}")
    observed: set[int] = set()  # how many jobs the loop's other tasks saw scheduled
    watcher = None

    async def other_tasks() -> None:
        assert watcher is not None
        while True:
            observed.add(watcher.execute("SELECT count(*) FROM playbook_job").fetchone()[0])
            await asyncio.sleep(0)

    await db.upgrade()
    ticking: asyncio.Task[None] | None = None
    try:
        watcher = sqlite3.connect(tmp_path / "sweep.db")
        assert await sweep_stage_changes(db, books, now=NOW) == 0  # the first sets the cursor
        async with db.write() as conn:
            ids = (await conn.execute(insert(Customer.__table__).returning(Customer.id), [
                {"display_name": f"c{i}", "created_at": NOW} for i in range(500)])).scalars()
            await conn.execute(insert(StageChange.__table__), [
                {"customer_id": cid, "from_stage": "awareness", "to_stage": "consideration",
                 "reason": "asked about a product", "created_at": NOW} for cid in ids])
        ticking = asyncio.create_task(other_tasks())
        await asyncio.sleep(0)
        assert await sweep_stage_changes(db, books, now=NOW) == 500
        # in one transaction the others would see none, then all: here they saw it in steps
        assert len(observed - {0, 500}) >= 2, sorted(observed)
        assert await sweep_stage_changes(db, books, now=NOW) == 0  # each once
        async with db.read() as conn:
            jobs = (await conn.execute(select(PlaybookJob.customer_id))).scalars().all()
        assert len(jobs) == len(set(jobs)) == 500
    finally:
        if ticking is not None:
            ticking.cancel()
        if watcher is not None:
            watcher.close()
        await db.close()

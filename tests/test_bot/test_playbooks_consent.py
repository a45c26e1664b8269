"""Playbooks and consent over HTTP: marketing mail only with the store's opt-in, carrying a
working one-click unsubscribe (RFC 8058); quiet hours in the store's time zone and the weekly
cap hold; opt-out words in en/it/th are confirmed in that language; the web chat shows a step
on the visitor's next visit; the playbooks panel counts what happened. The SMTP server is a
local sink; the clock is injected."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from sqlalchemy import select

from bot.db.models import Consent, Conversation
from core.clock import FrozenClock
from tests.conftest import ADMIN_TOKEN, chat, eventually, stays, transcript
from tests.fakes.email import SmtpSink, smtp_sink
from tests.test_bot.playbook_helpers import (
    Start,
    clock,
    jobs,
    order,
    post_order,
    start_shop,
)

__all__ = ["clock", "start_shop"]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

NEWS = """\
playbooks:
  - name: news
    trigger: {order: created}
    steps:
      - delay: 10s
        kind: marketing
        subject: {en: "News for $name", it: "Novità per $name", th: "ข่าวสำหรับ $name"}
        message: {en: "Hello $name, new arrivals!", it: "Ciao $name, novità!", th: "สวัสดี $name"}
      - delay: 20s
        kind: marketing
        message: {en: "More news, $name", it: "Altre novità", th: "ข่าวอีก"}
"""
POINTS = """\
playbooks:
  - name: points
    trigger: points_expiring
    steps:
      - delay: 30s
        kind: transactional
        message:
          en: "$name, your $points points expire on $points_expire"
          it: "$name, i tuoi $points punti scadono il $points_expire"
          th: "คุณ$name คะแนน $points หมดอายุ $points_expire"
"""
SUBSCRIBED = {"email_marketing_consent": {"state": "subscribed",
                                          "opt_in_level": "single_opt_in"}}


@pytest.fixture
def sink() -> Iterator[tuple[SmtpSink, int]]:
    with smtp_sink() as found:
        yield found


def mail_settings(port: int, **extra: Any) -> dict[str, Any]:
    return {"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_tls": "none",
            "email_from": "Demo Shop <shop@demo.test>", **extra}


async def test_marketing_mail_needs_the_stores_opt_in(
        start_shop: Start, sink: tuple[SmtpSink, int], clock: FrozenClock) -> None:
    mails, port = sink
    shop = await start_shop(NEWS, **mail_settings(port))
    await post_order(shop, order("paid"), "orders/create", "wh-no-consent")
    clock.advance(timedelta(seconds=31))
    rows = await eventually(lambda: _decided(shop, 2), what="both steps decided")
    assert {r.reason for r in rows} == {"no marketing opt-in on email"}
    assert not mails.messages


async def test_a_marketing_mail_carries_a_working_one_click_unsubscribe(
        start_shop: Start, sink: tuple[SmtpSink, int], clock: FrozenClock) -> None:
    mails, port = sink
    shop = await start_shop(NEWS, **mail_settings(port))
    await post_order(shop, order("paid", customer=SUBSCRIBED), "orders/create", "wh-news")
    clock.advance(timedelta(seconds=11))
    mail = (await eventually(lambda: mails.messages, what="the first mail"))[0]
    assert mail["To"] == "jon.snow@example.com" and mail["Subject"] == "News for Jon"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    targets = [t.strip(" <>") for t in str(mail["List-Unsubscribe"]).split(",")]
    assert targets[0] == "mailto:shop@demo.test?subject=unsubscribe"
    url = targets[1]
    assert url.startswith("http://127.0.0.1:8080/unsubscribe/")
    plain = mail.get_body(preferencelist=("plain",))
    assert plain is not None and "Hello Jon, new arrivals!" in plain.get_content()
    assert url in plain.get_content()

    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{shop.port}") as http:
        path = urlsplit(url).path
        async with http.post(path + "x", data="List-Unsubscribe=One-Click") as resp:
            assert resp.status == 404  # a forged or damaged token changes nothing
        async with http.get(path) as resp:  # a link scanner's GET unsubscribes nobody
            assert resp.status == 200 and "Unsubscribe" in await resp.text()
        assert not await _opted_out(shop)
        async with http.post(path, data="List-Unsubscribe=One-Click",
                             headers={"Content-Type": "application/x-www-form-urlencoded"}
                             ) as resp:
            assert resp.status == 200
    assert await _opted_out(shop)
    clock.advance(timedelta(seconds=20))
    rows = await eventually(lambda: _decided(shop, 2), what="the second step decided")
    assert rows[1].state == "cancelled" and rows[1].reason.startswith("opted out")
    await stays(lambda: len(mails.messages) == 1, window=0.3, what="no more marketing")


async def test_quiet_hours_move_a_step_and_the_weekly_cap_holds(
        start_shop: Start, sink: tuple[SmtpSink, int], clock: FrozenClock) -> None:
    mails, port = sink
    clock.set(datetime(2026, 3, 2, 19, 59, 40, tzinfo=UTC))  # 20:59:40 in Rome
    shop = await start_shop(NEWS, **mail_settings(
        port, playbook_quiet_hours="21:00-09:00", store_timezone="Europe/Rome",
        playbook_marketing_per_week=1))
    await post_order(shop, order("paid", customer=SUBSCRIBED), "orders/create", "wh-quiet")
    clock.advance(timedelta(seconds=11))  # step 1 due at 20:59:50 Rome: sent
    await eventually(lambda: mails.messages, what="the first mail, before the quiet hours")
    clock.advance(timedelta(seconds=15))  # step 2 due at 21:00:00 Rome: moved

    async def moved() -> Any:
        rows = await jobs(shop)
        return rows[1].reason and rows
    rows = await eventually(moved, what="the second step moved")
    assert rows[1].state == "scheduled" and rows[1].reason == "moved out of quiet hours"
    assert rows[1].due_at == datetime(2026, 3, 3, 8, 0, tzinfo=UTC)  # 09:00 in Rome
    clock.set(datetime(2026, 3, 3, 7, 59, tzinfo=UTC))
    await stays(lambda: len(mails.messages) == 1, window=0.3, what="quiet until 09:00")
    clock.set(datetime(2026, 3, 3, 8, 0, 1, tzinfo=UTC))
    rows = await eventually(lambda: _decided(shop, 2), what="the second step decided")
    assert rows[1].state == "skipped"
    assert rows[1].reason == "frequency cap: 1 marketing messages in 7 days"
    assert len(mails.messages) == 1


@pytest.mark.parametrize(("word", "lang", "says"), [
    ("STOP", "en", "Done: you won't get any more messages"),
    ("annulla iscrizione", "it", "Fatto: non riceverai più messaggi"),
    ("ยกเลิก", "th", "เรียบร้อยค่ะ คุณจะไม่ได้รับข้อความจากเราอีก"),
])
async def test_opt_out_words_are_confirmed_in_their_language(
        start_shop: Start, word: str, lang: str, says: str) -> None:
    shop = await start_shop(POINTS)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{shop.port}") as http:
        visitor, _ = await chat(http, "hello")
        _, reply = await chat(http, word, visitor)
    assert reply["text"].startswith(says)
    assert reply["language"] == lang
    async with shop.db.read() as conn:
        row = (await conn.execute(select(Consent.__table__))).one()
    assert row.channel == "webchat" and row.opted_out_at is not None
    assert row.opt_out_source == "webchat message"


async def test_a_store_event_reaches_the_web_chat_on_the_next_visit_and_is_measured(
        start_shop: Start, clock: FrozenClock) -> None:
    shop = await start_shop(POINTS)
    async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{shop.port}") as http:
        visitor, _ = await chat(http, "hello", name="Ann")
        async with shop.db.read() as conn:
            cv = Conversation.__table__.c
            customer_id = (await conn.execute(select(cv.customer_id).where(
                cv.address == visitor))).scalar_one()
        event = {"customer_id": customer_id, "event": "points_expiring", "id": "2026-03",
                 "variables": {"points": 120, "points_expire": "31 March"}}
        for _ in range(2):  # the loyalty tool retries: scheduled once
            async with http.post("/api/playbooks/events", json=event, headers=ADMIN) as resp:
                assert resp.status == 200
        assert [r.state for r in await jobs(shop)] == ["scheduled"]
        clock.advance(timedelta(seconds=31))
        await eventually(lambda: _decided(shop, 1), what="the step sent")
        shown = [m for m in await transcript(http, visitor) if m["from"] == "playbook"]
        # the name typed into the chat greets this visitor (it is never the name on record)
        assert [m["text"] for m in shown] == ["Ann, your 120 points expire on 31 March"]
        await chat(http, "thanks", visitor)  # a reply after the step's message

        async with http.get("/api/dashboard/playbooks", params={"period": "custom",
                                                                 "from": "2026-03-01",
                                                                 "to": "2026-03-03"},
                            headers=ADMIN) as resp:
            assert resp.status == 200
            figures = await resp.json()
        async with http.get("/api/dashboard/playbooks", params={
                "period": "custom", "from": "2026-03-01", "format": "csv"},
                headers=ADMIN) as resp:
            assert resp.status == 200
            csv_text = await resp.text()
        async with http.get("/api/dashboard/playbooks") as resp:
            assert resp.status == 401
    (step,) = figures["steps"]
    assert step | {"top_reason": ""} == {
        "playbook": "points", "step": 1, "kind": "transactional", "scheduled": 0, "sent": 1,
        "delivered": 1, "skipped": 0, "cancelled": 0, "replied": 1, "opted_out": 0,
        "ordered": 0, "stage_moved": 0, "top_reason": ""}
    assert csv_text.splitlines()[0].startswith("playbook,step,kind,scheduled,sent,delivered")
    assert csv_text.splitlines()[1].startswith("points,1,transactional,0,1,1")


async def _decided(shop: Any, count: int) -> list[Any] | None:
    rows = await jobs(shop)
    done = [r for r in rows if r.state != "scheduled"]
    return rows if len(done) >= count else None


async def _opted_out(shop: Any) -> bool:
    async with shop.db.read() as conn:
        row = (await conn.execute(select(Consent.__table__))).first()
    return row is not None and row.opted_out_at is not None


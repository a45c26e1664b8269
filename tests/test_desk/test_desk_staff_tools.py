"""What staff do on a card besides replying: notes, release, reopen, snooze, assign, Save as
FAQ, and the WhatsApp window; signed Slack requests against the real service and the fake
Slack Web API, with customers writing in English, Italian and Thai."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, update

from bot.app import Service
from bot.db.models import Conversation, Message
from faq.loader import lint_faq_file
from tests.conftest import eventually, next_reply, transcript
from tests.fakes.slack import FakeSlack, click, message_shortcut, slash
from tests.fakes.twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    INBOUND_PATH,
    OUR_NUMBER,
    PUBLIC_URL,
    FakeTwilio,
    fake_twilio,
    inbound_params,
)
from tests.fakes.twilio import post_signed as twilio_post
from tests.test_desk.conftest import (
    STAFF,
    action_ids,
    blocks_text,
    card_of,
    escalation,
    updates,
)
from tests.test_desk.test_desk import say, staff_reply, webchat

ASK_PERSON = {"en": "I want to talk to a person please",
              "it": "Voglio parlare con una persona per favore",
              "th": "ขอคุยกับพนักงานหน่อยค่ะ"}
NOTE_WORDS = {"en": "check the courier first", "it": "controllare prima il corriere",
              "th": "เช็คขนส่งก่อน"}


def last_card(slack: FakeSlack, ts: str) -> dict[str, Any]:
    return dict(slack.calls_to("chat.update", ts=ts)[-1])


@pytest.mark.parametrize("lang", ["en", "it", "th"])
async def test_a_note_stays_in_slack_and_a_reply_reaches_the_customer_in_any_language(
        start_desk: Any, slack: FakeSlack, lang: str) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, ASK_PERSON[lang])
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        esc = await escalation(service)
        assert esc.reason == "asked_for_human"
        assert await staff_reply(service, ts, f"note: {NOTE_WORDS[lang]}", ts="7.1") == 200
        await eventually(lambda: any("internal note" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)),
                         what="the thread says the note stayed internal")
        assert await staff_reply(service, ts, "Ciao / hello / สวัสดี", ts="7.2") == 200
        await eventually(lambda: _texts_have(session, visitor, "Ciao / hello / สวัสดี"),
                         what="the staff reply on the page")
        texts = [m["text"] for m in await transcript(session, visitor)]
        assert not any(NOTE_WORDS[lang] in t for t in texts)
        async with service.db.read() as conn:
            note = (await conn.execute(select(Message.text).where(
                Message.direction == "note"))).scalar_one()
        assert note == NOTE_WORDS[lang]
    finally:
        await session.close()


async def _texts_have(session: Any, visitor: str, text: str) -> bool:
    return any(m["text"] == text for m in await transcript(session, visitor))


async def test_release_puts_it_back_in_the_queue_and_reopen_brings_a_resolved_one_back(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, ASK_PERSON["it"])
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        esc = await escalation(service)
        assert await click(service, "desk_take", str(esc.id), message_ts=ts) == 200
        await eventually(lambda: "desk_release" in action_ids(last_card(slack, ts)["blocks"])
                         if slack.calls_to("chat.update", ts=ts) else False,
                         what="the taken card offers Release")

        assert await click(service, "desk_release", str(esc.id), message_ts=ts) == 200
        await eventually(lambda: _status(escalation(service), "open"), what="released")
        await eventually(lambda: "desk_take" in action_ids(last_card(slack, ts)["blocks"]),
                         what="the released card offers Take again")
        assert (await escalation(service)).taken_by is None

        assert await click(service, "desk_resolve", str(esc.id), message_ts=ts) == 200
        await eventually(lambda: "desk_reopen" in action_ids(last_card(slack, ts)["blocks"]),
                         what="the resolved card offers Reopen")
        assert await click(service, "desk_reopen", str(esc.id), user="UOTHER",
                           message_ts=ts) == 200
        reopened = await eventually(lambda: _status(escalation(service), "taken"),
                                    what="reopened")
        assert reopened.taken_by == "UOTHER" and reopened.resolved_at is None
        async with service.db.read() as conn:
            status = (await conn.execute(select(Conversation.status))).scalar_one()
        assert status == "human"
        # the reopened conversation is answered by staff again, not the bot
        before = len(await transcript(session, visitor))
        await say(service, "ancora io", visitor)
        await eventually(lambda: any("ancora io" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)),
                         what="the customer's message mirrored into the thread")
        assert len(await transcript(session, visitor)) == before + 1  # no bot answer
    finally:
        await session.close()


async def _status(row: Any, status: str) -> Any:
    value = await row
    return value if value is not None and value.status == status else None


async def test_snooze_holds_reminders_until_it_ends_and_the_customer_writing_ends_it(
        start_desk: Any, slack: FakeSlack) -> None:
    service, clock = await start_desk()
    assert service.desk is not None
    session, visitor = await webchat(service, ASK_PERSON["th"])
    try:
        await next_reply(session, visitor)
        ts, call = await card_of(service, slack)
        esc = await escalation(service)
        menu = next(e for b in call.params["blocks"] if b.get("type") == "actions"
                    for e in b["elements"] if e["action_id"] == "desk_snooze")
        option = next(o for o in menu["options"] if o["value"].endswith(":1h"))
        assert await click(service, "desk_snooze", "", message_ts=ts, type="static_select",
                           selected_option=option) == 200
        snoozed = await eventually(lambda: _snoozed(service), what="snoozed")
        assert snoozed.snoozed_until > clock() + timedelta(minutes=55)
        await eventually(lambda: any("snoozed until" in t for t in updates(slack, ts)),
                         what="the card says snoozed")

        clock.advance(minutes=45)  # past the team's re-post time, but snoozed: no reminder
        assert await service.desk.check_untaken() == 0
        clock.advance(minutes=20)  # the snooze is over: one reminder in the thread
        assert await service.desk.check_untaken() >= 1
        await eventually(lambda: any("snooze on" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)),
                         what="snooze-over reminder")
        assert (await escalation(service)).snoozed_until is None

        status, _ = await slash(service, f"snooze {esc.id} 2h")
        assert status == 200
        await eventually(lambda: _snoozed(service), what="snoozed again by /inbox")
        await say(service, "ยังรออยู่นะคะ", visitor)
        await eventually(lambda: any("snooze ended" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)),
                         what="the customer's message ends the snooze")
        assert (await escalation(service)).snoozed_until is None
    finally:
        await session.close()


async def _snoozed(service: Service) -> Any:
    row = await escalation(service)
    return row if row.snoozed_until is not None else None


async def test_assign_from_the_card_menu_names_the_teammate(start_desk: Any,
                                                            slack: FakeSlack) -> None:
    service, _ = await start_desk()
    session, visitor = await webchat(service, ASK_PERSON["en"])
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        esc = await escalation(service)
        assert await click(service, "desk_assign", "", message_ts=ts, type="users_select",
                           block_id=f"desk-assign-{esc.id}", selected_user="UANNA") == 200
        taken = await eventually(lambda: _status(escalation(service), "taken"), what="assigned")
        assert taken.taken_by == "UANNA"
        await eventually(lambda: any("assigned this to <@UANNA>" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)),
                         what="the thread says who has it")
        # a forged block id is refused, not a crash
        assert await click(service, "desk_assign", "", message_ts=ts, type="users_select",
                           block_id="desk-assign-x", selected_user="UANNA") == 200
        await eventually(lambda: slack.calls_to("chat.postEphemeral"), what="told why")
    finally:
        await session.close()


async def test_save_as_faq_drafts_an_entry_that_is_linted_and_never_served(
        start_desk: Any, slack: FakeSlack, tmp_path: Path) -> None:
    drafts = tmp_path / "drafts.yaml"
    service, _ = await start_desk(faq_drafts_file=drafts)
    question = "Posso pagare con un bonifico dalla Svizzera?"
    session, visitor = await webchat(service, question)
    try:
        await next_reply(session, visitor)
        ts, _ = await card_of(service, slack)
        answer = "Sì: bonifico in CHF o EUR, IBAN nella conferma d'ordine."
        assert await staff_reply(service, ts, answer, ts="9.1") == 200
        await eventually(lambda: _texts_have(session, visitor, answer), what="reply delivered")

        assert await message_shortcut(service, "desk_save_faq", {
            "ts": "9.1", "thread_ts": ts, "user": "USTAFF", "text": answer}) == 200
        await eventually(drafts.exists, what="drafts file written")
        entries = yaml.safe_load(drafts.read_text(encoding="utf-8"))
        assert len(entries) == 1
        entry = entries[0]
        assert entry["draft"] is True
        assert entry["questions"] == [question]
        assert entry["answer"] == {"it": answer}
        assert not [p for p in lint_faq_file(drafts) if p.blocks_load and p.level == "error"]
        await eventually(lambda: any(entry["id"] in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)),
                         what="the desk says what it drafted")
        # not served: the same question still goes to a person
        other, visitor2 = await webchat(service, question)
        try:
            reply = await next_reply(other, visitor2)
            assert reply["text"] != answer
        finally:
            await other.close()
        # the shortcut on the card itself (not a reply) is refused politely
        assert await message_shortcut(service, "desk_save_faq", {
            "ts": ts, "user": "UBOT", "text": "card"}) == 200
        await eventually(lambda: slack.calls_to("chat.postEphemeral"), what="told why")
        assert len(yaml.safe_load(drafts.read_text(encoding="utf-8"))) == 1
    finally:
        await session.close()


async def test_whatsapp_outside_the_window_the_card_waits_for_the_customer_and_the_text_goes_once(
        desk_settings: Any, slack: FakeSlack) -> None:
    async with fake_twilio() as fake:
        service = Service(desk_settings(
            twilio_account_sid=ACCOUNT_SID, twilio_auth_token=AUTH_TOKEN,
            twilio_whatsapp_from=OUR_NUMBER, twilio_api_base=fake.url, public_url=PUBLIC_URL))
        await service.start()
        try:
            await _held_whatsapp_reply(service, slack, fake)
        finally:
            await service.stop()


async def _held_whatsapp_reply(service: Service, slack: FakeSlack, fake: FakeTwilio) -> None:
    assert await twilio_post(service, PUBLIC_URL + INBOUND_PATH, inbound_params(
        "SM" + "1" * 32, ASK_PERSON["it"], name="Giulia")) == 200
    ts, call = await card_of(service, slack)
    assert "WhatsApp window open" in blocks_text(call.params["blocks"])
    await eventually(lambda: len(fake.accepted) == 1, what="the bot's hand-over line")
    async with service.db.write() as conn:
        await conn.execute(update(Conversation).values(
            last_inbound_at=datetime.now(UTC) - timedelta(hours=30)))
    text = "Ciao Giulia, il rimborso è partito oggi."
    assert await staff_reply(service, ts, text, ts="11.1") == 200
    await eventually(lambda: any("Waiting for the customer to reopen" in blocks_text(c["blocks"])
                               for c in slack.calls_to("chat.update", ts=ts)),
                     what="card shows the held text")
    assert all(m.get("Body") != text for m in fake.accepted)  # never before they write
    async with service.db.read() as conn:
        status = (await conn.execute(select(Message.status).where(Message.text == text))
                  ).scalar_one()
    assert status == "held"

    assert await twilio_post(service, PUBLIC_URL + INBOUND_PATH, inbound_params(
        "SM" + "2" * 32, "ci sei?", name="Giulia")) == 200
    await eventually(lambda: any(m.get("Body") == text for m in fake.accepted),
                     what="the held text delivered")
    await eventually(lambda: "Waiting for the customer to reopen" not in
                     blocks_text(last_card(slack, ts)["blocks"]), what="card no longer waits")
    assert [m.get("Body") for m in fake.accepted].count(text) == 1

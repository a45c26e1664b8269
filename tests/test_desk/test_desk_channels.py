"""Staff answer in Slack; the customer gets it on Telegram, Slack or email (real SDKs, fakes)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from bot.db.models import Message
from tests.conftest import eventually
from tests.fakes.email import (
    dovecot_server,
    email_settings,
    imap_append,
    make_mail,
    smtp_sink,
)
from tests.fakes.slack import CUSTOMER_DM, FakeSlack, click, send_event
from tests.fakes.telegram import TelegramHarness, fake_telegram, message_update, post_webhook
from tests.test_desk.conftest import STAFF, blocks_text, card_of, escalation

NO_MATCH = "Qwerty zxcvb plonk?"


async def staff_reply(service: Any, card_ts: str, text: str, ts: str, **extra: Any) -> int:
    return await send_event(service, {"channel": STAFF, "channel_type": "channel",
                                      "user": "USTAFF", "text": text, "ts": ts,
                                      "thread_ts": card_ts, **extra}, event_id=f"Ev{ts}")


async def test_telegram_question_without_answer_reaches_staff_and_back(
        start_desk: Any, slack: FakeSlack) -> None:
    async with fake_telegram() as tg:
        service, _ = await start_desk(**TelegramHarness(tg).settings())
        assert await post_webhook(service, message_update(5001, NO_MATCH)) == 200
        ts, card = await card_of(service, slack)
        text = blocks_text(card.params["blocks"])
        assert "Ann" in text and "Telegram" in text and "no FAQ answer" in text
        assert NO_MATCH in text
        esc = await escalation(service)
        assert esc.reason == "no_match"
        await eventually(lambda: len(tg.sent_messages()) == 1, what="escalation notice")

        assert await staff_reply(service, ts, "Hello Ann, could you tell us more?",
                                 "1700003000.000001") == 200
        sent = await eventually(lambda: [m for m in tg.sent_messages()
                                       if m["text"] == "Hello Ann, could you tell us more?"],
                                what="staff reply on Telegram")
        assert int(sent[0]["chat_id"]) == 777

        # the customer answers: no bot reply, the message shows up in the staff thread
        assert await post_webhook(service, message_update(5002, "Order 42, the blue one")) == 200
        await eventually(lambda: any("Order 42, the blue one" in str(c.params.get("text"))
                                   for c in slack.posts(STAFF, thread=ts)), what="mirror")
        assert len(tg.sent_messages()) == 2


async def test_failed_delivery_shows_in_thread_and_can_be_retried(
        start_desk: Any, slack: FakeSlack) -> None:
    async with fake_telegram() as tg:
        service, _ = await start_desk(**TelegramHarness(tg).settings())
        assert await post_webhook(service, message_update(6001, NO_MATCH)) == 200
        ts, _ = await card_of(service, slack)
        await eventually(lambda: len(tg.sent_messages()) == 1, what="escalation notice")
        tg.fail_next("permanent")
        assert await staff_reply(service, ts, "Your parcel left today.",
                                 "1700003000.000002") == 200
        notice = await eventually(lambda: [c for c in slack.posts(STAFF, thread=ts)
                                         if "Delivery to the customer failed" in
                                         str(c.params.get("text"))], what="failure notice")
        assert "chat not found" in notice[0].params["text"]
        retry = next(e for b in notice[0].params["blocks"] if b["type"] == "actions"
                     for e in b["elements"])
        assert retry["action_id"] == "desk_retry"
        async with service.db.read() as conn:
            status = (await conn.execute(select(Message.status).where(
                Message.text == "Your parcel left today."))).scalar_one()
        assert status == "failed"

        assert await click(service, "desk_retry", retry["value"], message_ts=ts) == 200
        await eventually(lambda: any(m["text"] == "Your parcel left today."
                                   for m in tg.sent_messages()), what="retried delivery")
        # clicking Retry again does nothing but tell the clicker
        assert await click(service, "desk_retry", retry["value"], message_ts=ts) == 200
        assert "not failed any more" in slack.calls_to("chat.postEphemeral")[-1]["text"]
        assert sum(m["text"] == "Your parcel left today." for m in tg.sent_messages()) == 1


async def test_send_suggested_answer(start_desk: Any, slack: FakeSlack) -> None:
    async with fake_telegram() as tg:
        service, _ = await start_desk(**TelegramHarness(tg).settings())
        assert await post_webhook(service, message_update(7001,
                                                          "Is the moon made of cheese?")) == 200
        ts, card = await card_of(service, slack)
        esc = await escalation(service)
        if not esc.candidates:
            assert "desk_suggest" not in str(card.params["blocks"])
            return
        assert "FAQ candidates" in blocks_text(card.params["blocks"])
        best = service.faq.get(esc.candidates[0]["faq_id"])
        expected, _ = best.answer_for("en", "en", {"store_name": "Demo Shop"})
        assert await click(service, "desk_suggest", str(esc.id), message_ts=ts) == 200
        await eventually(lambda: any(m["text"] == expected for m in tg.sent_messages()),
                         what="suggested answer on Telegram")
        esc = await escalation(service)
        assert esc.status == "taken" and esc.first_response_at is not None


async def test_slack_customer_escalation_is_answered_in_their_dm(
        start_desk: Any, slack: FakeSlack) -> None:
    service, _ = await start_desk()
    event = {"channel": CUSTOMER_DM, "channel_type": "im", "user": "UCUST",
             "text": "I want to talk to a human please", "ts": "1700004000.000001"}
    assert await send_event(service, event, event_id="EvDm1") == 200
    ts, card = await card_of(service, slack)
    assert "Ann" in blocks_text(card.params["blocks"])
    assert await staff_reply(service, ts, "Hi Ann, Sam from support.", "1700004000.000002") == 200
    await eventually(lambda: any(c.params.get("text") == "Hi Ann, Sam from support."
                               for c in slack.posts(CUSTOMER_DM)), what="reply in the DM")


async def test_email_customer_gets_staff_reply_in_the_same_thread(
        start_desk: Any, slack: FakeSlack) -> None:
    server = dovecot_server()  # skips with the reason when Dovecot cannot run here
    user = server.new_user()
    with smtp_sink() as (sink, port):
        service, _ = await start_desk(**email_settings(server, user, port))
        raw = make_mail(subject="Strange request", body="I want to talk to a human please",
                        message_id="<desk-q1@example.com>")
        await imap_append(server.port, user, raw)
        ts, card = await card_of(service, slack, )
        assert "Email" in blocks_text(card.params["blocks"])
        await eventually(lambda: len(sink.messages) == 1, what="escalation notice mail")
        assert await staff_reply(service, ts, "Dear Ann, we are on it.",
                                 "1700005000.000001") == 200
        await eventually(lambda: len(sink.messages) == 2, what="staff mail")
        mail = sink.messages[-1]
        body = mail.get_body(preferencelist=("plain",))
        assert body is not None and "Dear Ann, we are on it." in body.get_content()
        assert mail["To"].addresses[0].addr_spec == "ann@example.com"
        assert mail["In-Reply-To"] == "<desk-q1@example.com>"
        assert "<desk-q1@example.com>" in mail["References"]
        assert mail["Subject"] == "Re: Strange request"


async def test_attachments_pass_both_ways_as_links_and_metadata(
        start_desk: Any, slack: FakeSlack) -> None:
    async with fake_telegram() as tg:
        service, _ = await start_desk(**TelegramHarness(tg).settings())
        assert await post_webhook(service, message_update(8001, NO_MATCH)) == 200
        ts, _ = await card_of(service, slack)
        photo = [{"file_id": "PH1", "file_unique_id": "u1", "width": 90, "height": 90,
                  "file_size": 1234}]
        assert await post_webhook(service, message_update(8002, None, photo=photo,
                                                          caption="the damage")) == 200
        mirror = await eventually(lambda: [c for c in slack.posts(STAFF, thread=ts)
                                         if "📎" in str(c.params.get("text"))], what="mirror")
        assert "the damage" in mirror[0].params["text"]

        files = [{"id": "F9", "name": "label.pdf", "mimetype": "application/pdf",
                  "size": 999, "permalink": "https://fake.slack.test/files/F9"}]
        assert await staff_reply(service, ts, "Print this return label", "1700006000.000001",
                                 subtype="file_share", files=files) == 200
        sent = await eventually(lambda: [m for m in tg.sent_messages()
                                       if "Print this return label" in m["text"]],
                                what="staff reply with file")
        assert "label.pdf: https://fake.slack.test/files/F9" in sent[0]["text"]
        async with service.db.read() as conn:
            attachments = (await conn.execute(select(Message.attachments).where(
                Message.author == "staff:USTAFF"))).scalar_one()
        assert attachments[0]["name"] == "label.pdf"

"""The message pipeline gives the same result whatever the batch size.

The same customer traffic (new and returning customers on several channels, three languages,
stage keywords, repeated questions, escalations and what follows them, contact details,
attachments, several messages of one conversation in one batch) goes once message by message
and once in batches; every conversation must end with the same transcript, decisions, stage
history, escalations and outbox.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.app import Service
from bot.db.models import Conversation, Customer, Escalation, Message, OutboxItem, StageChange
from channels.base import Attachment, InboundMessage
from tests.conftest import throwaway_pg_database


def traffic() -> list[InboundMessage]:
    lines: list[tuple[str, str, str, dict[str, Any]]] = [
        ("webchat", "visitor-aaaaaaaaaaaaaaaa", "How much does shipping cost?", {}),
        ("webchat", "visitor-bbbbbbbbbbbbbbbb", "Quanto costa la spedizione?", {}),
        ("telegram", "1001", "ค่าส่งเท่าไหร่", {"display_name": "Som"}),
        ("webchat", "visitor-aaaaaaaaaaaaaaaa", "Where is my order?", {}),
        ("webchat", "visitor-aaaaaaaaaaaaaaaa", "Which payment methods do you accept?", {}),
        ("webchat", "visitor-bbbbbbbbbbbbbbbb", "Posso pagare con PayPal?", {}),
        ("whatsapp", "whatsapp:+393331234567", "How do I return an item?",
         {"phone": "+393331234567"}),
        ("whatsapp", "whatsapp:+393331234567", "What size should I take?",
         {"phone": "+393331234567"}),
        ("telegram", "1001", "ส่งต่างประเทศไหม", {"display_name": "Som"}),
        ("webchat", "visitor-cccccccccccccccc", "I want to cancel my account, this is terrible",
         {}),
        ("webchat", "visitor-aaaaaaaaaaaaaaaa", "Which payment methods do you accept?", {}),
        # the same again, sent after the answer (a minute later): that is a repeat
        ("webchat", "visitor-aaaaaaaaaaaaaaaa", "Which payment methods do you accept?",
         {"timestamp": datetime.now(UTC) + timedelta(minutes=1)}),
        ("webchat", "visitor-aaaaaaaaaaaaaaaa", "hello? anyone there?", {}),
        ("webchat", "visitor-bbbbbbbbbbbbbbbb", "Do you sell garden furniture?", {}),
        ("webchat", "visitor-bbbbbbbbbbbbbbbb", "Quanto costa la spedizione?", {}),
        ("webchat", "visitor-dddddddddddddddd", "How do I use a discount code?",
         {"email": "dana@example.com", "display_name": "Dana"}),
        ("webchat", "visitor-dddddddddddddddd", "Do you have a loyalty programme?", {}),
        ("webchat", "visitor-dddddddddddddddd", "How long does delivery take?",
         {"email": "dana@example.com"}),
        ("telegram", "1002", "", {"attachments": (Attachment(kind="image", ref="f1"),)}),
        ("telegram", "1002", "I'd like to buy the blue jacket, is it in stock?", {}),
        ("telegram", "1002", "I want to speak to a human", {}),
        ("telegram", "1002", "still there?", {}),
        ("telegram", "1002", "hello??", {}),
        ("whatsapp", "whatsapp:+393331234567", "Ho bisogno della fattura", {}),
        ("webchat", "visitor-cccccccccccccccc", "How do I reset my password?", {}),
    ]
    return [InboundMessage(channel=channel, external_id=f"m{n}", address=address, text=text,
                           **extra)
            for n, (channel, address, text, extra) in enumerate(lines)]


@contextlib.asynccontextmanager
async def two_services(make_settings: Any, kind: str, tmp_path: Path
                       ) -> AsyncIterator[tuple[Service, Service]]:
    async with contextlib.AsyncExitStack() as stack:
        services = []
        for name in ("one_by_one", "batched"):
            if kind == "sqlite":
                url = f"sqlite+aiosqlite:///{tmp_path / name}.db"
            else:
                url = await stack.enter_async_context(throwaway_pg_database())
            svc = Service(make_settings(database_url=url))
            await svc.db.upgrade()
            stack.push_async_callback(svc.db.close)
            services.append(svc)
        yield services[0], services[1]


async def snapshot(svc: Service) -> dict[str, Any]:
    """Per conversation (by channel and address), everything a person would look at."""
    ms, cv, sc = Message.__table__.c, Conversation.__table__.c, StageChange.__table__.c
    es, ob, cu = Escalation.__table__.c, OutboxItem.__table__.c, Customer.__table__.c
    async with svc.db.read() as conn:
        convs = (await conn.execute(select(cv.id, cv.channel, cv.address, cv.status, cv.language,
                                           cv.stage, cv.last_faq_id, cv.customer_id)
                                    .order_by(cv.id))).all()
        messages = (await conn.execute(select(ms.id, ms.conversation_id, ms.direction,
                                              ms.author, ms.text, ms.language, ms.faq_id,
                                              ms.score, ms.decision, ms.status, ms.meta,
                                              ms.external_id, ms.attachments)
                                       .order_by(ms.id))).all()
        changes = (await conn.execute(select(sc.conversation_id, sc.from_stage, sc.to_stage,
                                             sc.reason).order_by(sc.id))).all()
        escalations = (await conn.execute(select(es.conversation_id, es.reason, es.question,
                                                 es.candidates, es.status)
                                          .order_by(es.id))).all()
        outbox = (await conn.execute(select(ob.message_id, ob.conversation_id, ob.status)))\
            .all()
        customers = {r.id: r for r in (await conn.execute(
            select(cu.id, cu.stage, cu.email, cu.phone, cu.display_name))).all()}
    text_of = {m.id: m.text for m in messages}
    queued = {o.message_id for o in outbox}
    out: dict[str, Any] = {}
    for c in convs:
        customer = customers[c.customer_id]
        out[f"{c.channel}:{c.address}:{c.id - convs[0].id}"] = {
            "conversation": (c.status, c.language, c.stage, c.last_faq_id),
            "customer": (customer.stage, customer.email, customer.phone, customer.display_name),
            "transcript": [
                (m.direction, m.author, m.text, m.language, m.faq_id, m.score, m.decision,
                 m.status, m.external_id, m.attachments,
                 text_of.get((m.meta or {}).get("in_reply_to")), m.id in queued)
                for m in messages if m.conversation_id == c.id],
            "stages": [tuple(s)[1:] for s in changes if s.conversation_id == c.id],
            "escalations": [tuple(e)[1:] for e in escalations if e.conversation_id == c.id],
        }
    return out


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql",
                                                          marks=pytest.mark.postgres)])
@pytest.mark.parametrize("batch_size", [1, 5, 50])
async def test_batches_write_what_one_by_one_writes(make_settings: Any, tmp_path: Path,
                                                    kind: str, batch_size: int) -> None:
    messages = traffic()
    async with two_services(make_settings, kind, tmp_path) as (single, batched):
        for msg in messages:
            async with single.db.write() as conn:
                await single.pipeline.handle(conn, [msg])
        outcomes = []
        for start in range(0, len(messages), batch_size):
            chunk = messages[start:start + batch_size]
            seen = [batched.pipeline.understand(m) for m in chunk]
            async with batched.db.write() as conn:
                outcomes += await batched.pipeline.handle(conn, chunk, seen)
        expected, got = await snapshot(single), await snapshot(batched)

    assert got == expected
    assert len(outcomes) == len(messages)
    decisions = [o.decision for o in outcomes]
    assert decisions.count("answer") >= 10
    assert {"escalate", "queued", "silent"} <= set(decisions)
    # sent twice before the first answer went out: two answers; sent again later: a repeat
    assert [outcomes[i].decision for i in (4, 10)] == ["answer", "answer"]
    assert outcomes[11].reason == "repeated_question"
    # waiting for a person after the repeat: told once that they are in the queue
    assert (outcomes[12].decision, outcomes[12].rule) == ("queued", "still_in_queue")
    # attachment -> waiting; the next message hears it is in the queue, asking for a person
    # again hears it again, anything else after that gets no more notices
    assert [outcomes[i].rule for i in (19, 20)] == ["still_in_queue"] * 2
    assert [outcomes[i].decision for i in (21, 22)] == ["silent", "silent"]


async def test_batch_keeps_a_conversations_turns_in_order(make_settings: Any,
                                                          tmp_path: Path) -> None:
    """A new visitor's four questions in one batch: question, answer, question, answer..."""
    async with two_services(make_settings, "sqlite", tmp_path) as (_, svc):
        texts = ["Where is my order?", "How much does shipping cost?",
                 "Posso pagare con PayPal?", "How do I return an item?"]
        chunk = [InboundMessage(channel="webchat", external_id=f"a{n}",
                                address="visitor-eeeeeeeeeeeeeeee", text=t)
                 for n, t in enumerate(texts)]
        async with svc.db.write() as conn:
            outcomes = await svc.pipeline.handle(conn, chunk)
        async with svc.db.read() as conn:
            ms = Message.__table__.c
            rows = (await conn.execute(select(ms.id, ms.direction, ms.text, ms.language,
                                              ms.meta).order_by(ms.id))).all()
            conversations = (await conn.execute(select(Conversation.__table__.c.id))).all()
    assert len(conversations) == 1
    assert [r.direction for r in rows] == ["in", "out"] * 4
    assert [r.text for r in rows[0::2]] == texts
    assert [r.language for r in rows[1::2]] == ["en", "en", "it", "en"]
    assert [r.meta["in_reply_to"] for r in rows[1::2]] == [r.id for r in rows[0::2]]
    assert [o.reply_message_id for o in outcomes] == [r.id for r in rows[1::2]]

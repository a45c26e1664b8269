"""What staff can do to an escalated conversation, wherever they work.

One module for the Slack desk (buttons, thread replies, `/inbox`, shortcuts) and the dashboard's
conversation view, so both behave the same: take, release, assign, reply, note, send an FAQ
answer, snooze, resolve, reopen, hand back to the bot. Each action changes the database in the
caller's transaction, queues what the customer must receive (outbox) and, when the Slack desk
is on (`mirrors`), what the staff thread must show (desk jobs). Business time comes from
`clock`, so tests control it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.models import (
    Conversation,
    ConversationStatus,
    Escalation,
    Message,
    OutboxItem,
)
from bot.desk import cards
from bot.desk.hooks import DeskHooks
from bot.desk.terms import (
    CV,
    ES,
    LIVE,
    MS,
    OB,
    OPEN,
    RESOLVED,
    RETURNED,
    TAKEN,
    DeskRefused,
    answerable,
    parse_duration,
)
from channels.base import Attachment
from core.phrases import text_for
from faq.models import FaqEntry

log = logging.getLogger(__name__)


class DeskActions(DeskHooks):
    """Staff actions on top of the hooks, without Slack.

    The Slack desk (`bot.desk.slack.Desk`) is this plus Slack: it sets `mirrors`, so every
    action also updates the card and the thread.
    """

    # --- staff actions ---------------------------------------------------------------------

    async def for_conversation(self, conn: AsyncConnection, conversation_id: int,
                               user: str) -> int:
        """The live escalation of a conversation; staff who step into a conversation the bot
        still holds open one ("opened by staff"), so every action has a card to report on."""
        live = (await conn.execute(select(ES.id).where(
            ES.conversation_id == conversation_id, ES.status.in_(LIVE))
            .order_by(ES.id.desc()).limit(1))).first()
        if live is not None:
            return int(live.id)
        conv = (await conn.execute(select(CV.id, CV.status).where(
            CV.id == conversation_id))).first()
        if conv is None:
            raise DeskRefused(f"There is no conversation #{conversation_id}.")
        question = (await conn.execute(select(MS.text).where(
            MS.conversation_id == conversation_id, MS.direction == "in")
            .order_by(MS.id.desc()).limit(1))).scalar()
        esc_id = int((await conn.execute(insert(Escalation.__table__).values(
            conversation_id=conversation_id, reason="staff_opened", status=OPEN,
            question=(question or "")[:2000], candidates=[], created_at=self.clock())
            .returning(ES.id))).scalar_one())
        await conn.execute(update(Conversation.__table__).where(CV.id == conversation_id)
                           .values(status=ConversationStatus.WAITING, updated_at=self.clock()))
        await self._route(conn, esc_id)
        log.info("desk: %s opened escalation #%d on conversation %d", user, esc_id,
                 conversation_id)
        return esc_id

    async def take(self, conn: AsyncConnection, esc_id: int, user: str,
                   by: str | None = None) -> str:
        e = await self._open_escalation(conn, esc_id)
        now = self.clock()
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id).values(
            status=TAKEN, taken_by=user, taken_at=e.taken_at or now))
        await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                           .values(status=ConversationStatus.HUMAN, assigned_to=user,
                                   updated_at=now))
        note = f"👤 {cards.mention(by)} assigned this to {cards.mention(user)}." \
            if by and by != user else f"👤 {cards.mention(user)} took this."
        await self._job(conn, "post", esc_id, {"text": note})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} is now with {cards.mention(user)}."

    async def assign(self, conn: AsyncConnection, esc_id: int, to: str, user: str) -> str:
        return await self.take(conn, esc_id, to, by=user)

    async def release(self, conn: AsyncConnection, esc_id: int, user: str) -> str:
        """Give a taken conversation back to the queue (still waiting for a person)."""
        e = await self._open_escalation(conn, esc_id)
        if e.status != TAKEN:
            raise DeskRefused(f"#{esc_id} is not taken.")
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id).values(
            status=OPEN, taken_by=None, taken_at=None))
        await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                           .values(status=ConversationStatus.WAITING, assigned_to=None,
                                   updated_at=self.clock()))
        await self._job(conn, "post", esc_id,
                        {"text": f"↩️ {cards.mention(user)} released this: it is waiting again."})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} is waiting again."

    async def resolve(self, conn: AsyncConnection, esc_id: int, user: str) -> str:
        e = await self._open_escalation(conn, esc_id)
        now = self.clock()
        survey = self.routing.routing.survey
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id).values(
            status=RESOLVED, resolved_at=now, taken_by=e.taken_by or user, snoozed_until=None,
            csat_asked_at=now if survey else None))
        await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                           .values(status=ConversationStatus.RESOLVED, resolved_at=now,
                                   updated_at=now))
        if survey:
            lang = e.language or self.default_language
            question = text_for("csat_question", lang, self.default_language)
            await self._to_customer(conn, e.conversation_id, question,
                                    lang, "bot", {"survey_for": esc_id})
        await self._job(conn, "post", esc_id, {"text": f"✅ {cards.mention(user)} resolved this."})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} resolved."

    async def back_to_bot(self, conn: AsyncConnection, esc_id: int, user: str) -> str:
        e = await self._open_escalation(conn, esc_id)
        now = self.clock()
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id)
                           .values(status=RETURNED, resolved_at=now, snoozed_until=None))
        await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                           .values(status=ConversationStatus.BOT, assigned_to=None,
                                   updated_at=now))
        await self._job(conn, "post", esc_id,
                        {"text": f"🤖 {cards.mention(user)} handed this back to the bot."})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} is back with the bot."

    async def reopen(self, conn: AsyncConnection, esc_id: int, user: str) -> str:
        """A resolved (or handed back) escalation is with `user` again."""
        e = await self._escalation(conn, esc_id=esc_id)
        if e is None:
            raise DeskRefused(f"There is no escalation #{esc_id}.")
        if e.status in LIVE:
            raise DeskRefused(f"#{esc_id} is still open.")
        newer = (await conn.execute(select(ES.id).where(
            ES.conversation_id == e.conversation_id, ES.id > esc_id, ES.status.in_(LIVE))
            .limit(1))).first()
        if newer is not None:
            raise DeskRefused(f"The customer has a newer escalation, #{newer.id}: use that one.")
        now = self.clock()
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id).values(
            status=TAKEN, taken_by=user, taken_at=now, resolved_at=None, csat_asked_at=None))
        await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                           .values(status=ConversationStatus.HUMAN, assigned_to=user,
                                   resolved_at=None, updated_at=now))
        await self._job(conn, "post", esc_id, {"text": f"🔄 {cards.mention(user)} reopened this."})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} is open again, with {cards.mention(user)}."

    async def snooze(self, conn: AsyncConnection, esc_id: int, user: str,
                     length: timedelta) -> str:
        """No reminders until then; the customer writing ends it early."""
        await self._open_escalation(conn, esc_id)
        until = self.clock() + length
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id)
                           .values(snoozed_until=until))
        await self._job(conn, "post", esc_id, {"text": f"💤 {cards.mention(user)} snoozed this "
                                                       f"until {until:%Y-%m-%d %H:%M} UTC."})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} snoozed until {until:%Y-%m-%d %H:%M} UTC."

    async def suggest(self, conn: AsyncConnection, esc_id: int, user: str) -> str:
        e = await self._open_escalation(conn, esc_id)
        entry = next((c for c in (answerable(self.faq, str(c.get("faq_id")))
                                  for c in e.candidates or ()) if c is not None), None)
        if entry is None:
            raise DeskRefused(f"#{esc_id} has no FAQ answer to suggest.")
        return await self._send_entry(conn, e, entry, user, "the suggested answer")

    async def answer(self, conn: AsyncConnection, esc_id: int, faq_id: str, user: str) -> str:
        """Send an FAQ entry's own text in the customer's language (the picker, `answer:`)."""
        e = await self._open_escalation(conn, esc_id)
        entry = answerable(self.faq, faq_id.strip())
        if entry is None:
            raise DeskRefused(f"`{faq_id.strip()[:80]}` is not an FAQ answer staff can send.")
        return await self._send_entry(conn, e, entry, user, "the FAQ answer")

    async def reply(self, conn: AsyncConnection, esc_id: int, user: str, text: str, *,
                    attachments: tuple[Attachment, ...] = (),
                    meta: dict[str, Any] | None = None, mirror: bool = True) -> str:
        """Staff text to the customer, on the customer's channel. `mirror`: also copy it into
        the Slack thread (a reply typed in the thread is already there)."""
        if not text.strip() and not attachments:
            raise DeskRefused("The reply is empty.")
        e = await self._open_escalation(conn, esc_id)
        await self._staff_send(conn, e, user, text, attachments, dict(meta or {}))
        if mirror:
            await self._job(conn, "post", esc_id, {
                "text": f"💬 {cards.mention(user)} replied:\n> {cards.escape(cards.short(text))}"})
        return f"Reply to #{esc_id} queued."

    async def note(self, conn: AsyncConnection, esc_id: int, user: str, text: str, *,
                   external_id: str | None = None, staff_name: str | None = None,
                   mirror: bool = True) -> str:
        """An internal note: kept with the conversation for staff, never sent to the customer."""
        if not text.strip():
            raise DeskRefused("The note is empty.")
        e = await self._escalation(conn, esc_id=esc_id)
        if e is None:
            raise DeskRefused(f"There is no escalation #{esc_id}.")
        await conn.execute(insert(Message.__table__).values(
            conversation_id=e.conversation_id, direction="note",
            channel="slack" if external_id else "dashboard", external_id=external_id,
            author=f"staff:{user}", text=text, status="internal",
            meta={"staff_name": staff_name} if staff_name else None,
            created_at=datetime.now(UTC)))
        if mirror:
            await self._job(conn, "post", esc_id, {
                "text": f"📝 Note by {cards.mention(user)} (not sent to the customer):\n> "
                        f"{cards.escape(cards.short(text))}"})
        return f"Note added to #{esc_id}."

    async def retry(self, conn: AsyncConnection, outbox_id: int, esc_id: int, user: str) -> str:
        row = (await conn.execute(select(OB.status, OB.message_id)
                                  .where(OB.id == outbox_id))).first()
        if row is None or row.status != "failed":
            raise DeskRefused("That reply is not failed any more (already retried or sent).")
        await conn.execute(update(OutboxItem.__table__).where(OB.id == outbox_id).values(
            status="pending", attempts=0, next_attempt_at=datetime.now(UTC), last_error=None))
        await conn.execute(update(Message.__table__).where(MS.id == row.message_id)
                           .values(status="pending", error=None))
        await self._job(conn, "post", esc_id,
                        {"text": f"🔁 {cards.mention(user)} retried the delivery."})
        return "Delivery queued again."

    async def do(self, conn: AsyncConnection, verb: str, esc_id: int, user: str,
                 argument: str = "") -> str:
        """One action by name (the buttons, `/inbox`, the dashboard)."""
        simple: dict[str, Callable[[AsyncConnection, int, str], Any]] = {
            "take": self.take, "release": self.release, "resolve": self.resolve,
            "back": self.back_to_bot, "reopen": self.reopen, "suggest": self.suggest}
        if verb in simple:
            return str(await simple[verb](conn, esc_id, user))
        if verb == "snooze":
            return await self.snooze(conn, esc_id, user, parse_duration(argument or "1h"))
        if verb == "answer":
            return await self.answer(conn, esc_id, argument, user)
        if verb == "reply":
            return await self.reply(conn, esc_id, user, argument)
        if verb == "note":
            return await self.note(conn, esc_id, user, argument)
        if verb == "assign":
            if not argument:
                raise DeskRefused("Say who to assign it to.")
            return await self.assign(conn, esc_id, argument, user)
        raise DeskRefused(f"Unknown action {verb!r}.")

    # --- helpers ---------------------------------------------------------------------------

    async def _escalation(self, conn: AsyncConnection, *, esc_id: int | None = None,
                          staff: tuple[str, str] | None = None) -> Row[Any] | None:
        stmt = (select(ES.id, ES.status, ES.conversation_id, ES.taken_by, ES.taken_at,
                       ES.first_response_at, ES.candidates, ES.question, ES.snoozed_until,
                       CV.language, CV.channel)
                .join(Conversation.__table__, CV.id == ES.conversation_id))
        if esc_id is not None:
            stmt = stmt.where(ES.id == esc_id)
        if staff is not None:
            stmt = stmt.where(ES.staff_channel == staff[0], ES.staff_thread == staff[1])
        return (await conn.execute(stmt.order_by(ES.id.desc()).limit(1))).first()

    async def _open_escalation(self, conn: AsyncConnection, esc_id: int) -> Row[Any]:
        e = await self._escalation(conn, esc_id=esc_id)
        if e is None:
            raise DeskRefused(f"There is no escalation #{esc_id}.")
        if e.status not in LIVE:
            raise DeskRefused(f"#{esc_id} is already closed ({e.status}).")
        return e

    async def _send_entry(self, conn: AsyncConnection, e: Row[Any], entry: FaqEntry, user: str,
                          what: str) -> str:
        text, lang = entry.answer_for(e.language or self.default_language,
                                      self.default_language, {"store_name": self.store_name})
        await self._staff_send(conn, e, user, text, (), {"faq_id": entry.id, "suggested": True},
                               lang=lang)
        await self._job(conn, "post", e.id, {
            "text": f"📨 {cards.mention(user)} sent {what} `{entry.id}` ({lang}):\n"
                    f"> {cards.escape(cards.short(text))}"})
        return f"Sent `{entry.id}` ({lang}) for #{e.id}."

    async def _staff_send(self, conn: AsyncConnection, e: Row[Any], user: str, text: str,
                          attachments: tuple[Attachment, ...], meta: dict[str, Any], *,
                          lang: str | None = None) -> None:
        """A staff message to the customer, on their channel, in their conversation; the
        first one takes the conversation."""
        now = self.clock()
        await self._to_customer(conn, e.conversation_id, text, lang or e.language,
                                f"staff:{user}", meta, attachments)
        values: dict[str, Any] = {}
        if e.first_response_at is None:
            values["first_response_at"] = now
        if e.status == OPEN:
            values.update(status=TAKEN, taken_by=user, taken_at=now)
            await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                               .values(status=ConversationStatus.HUMAN, assigned_to=user))
        if values:
            await conn.execute(update(Escalation.__table__).where(ES.id == e.id).values(values))
            await self._job(conn, "update", e.id)

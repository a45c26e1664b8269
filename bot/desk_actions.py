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
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bot import desk_cards as cards
from bot.db.engine import Database
from bot.db.models import (
    Conversation,
    ConversationStatus,
    Customer,
    Escalation,
    Message,
    OutboxItem,
)
from bot.desk_jobs import FaqLookup, queue_job, staff_may_send
from bot.pipeline.rules import PendingSurvey
from bot.replies import OutgoingReply, queue_replies
from bot.routing import DAY_NAMES, RoutingStore
from channels.base import Attachment, Channel, OutboundMessage
from core.errors import InputError
from core.phrases import text_for
from faq.models import FaqEntry

log = logging.getLogger(__name__)
ES, CV, CU = Escalation.__table__.c, Conversation.__table__.c, Customer.__table__.c
MS, OB = Message.__table__.c, OutboxItem.__table__.c
OPEN, TAKEN, RESOLVED, RETURNED = "open", "taken", "resolved", "returned"
LIVE = (OPEN, TAKEN)
NOTE_MARKERS = ("note:", "!note", "/note")
SURVEY = {
    "en": "Your request has been resolved. How happy are you with our help? Reply with a number "
          "from 1 (not at all) to 5 (very).",
    "it": "La tua richiesta è stata risolta. Quanto sei soddisfatto del nostro aiuto? Rispondi "
          "con un numero da 1 (per niente) a 5 (molto).",
    "th": "คำขอของคุณได้รับการแก้ไขแล้ว คุณพึงพอใจกับการช่วยเหลือของเรามากแค่ไหน "
          "ตอบกลับด้วยตัวเลข 1 (ไม่พอใจ) ถึง 5 (พอใจมาก)",
}
THANKS = {"en": "Thank you for your feedback!", "it": "Grazie per il tuo feedback!",
          "th": "ขอบคุณสำหรับความคิดเห็นของคุณค่ะ"}
MAX_SNOOZE = timedelta(days=30)
_DURATION = re.compile(r"^(\d{1,5})\s*(m|min|h|d)$", re.IGNORECASE)


class DeskRefused(InputError):
    """A staff action that cannot be done (unknown id, already resolved...); shown to them."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)


def note_text(text: str) -> str | None:
    """The note when `text` is marked as internal (`note: ...`), else None."""
    stripped = text.strip()
    for marker in NOTE_MARKERS:
        if stripped.lower().startswith(marker):
            return stripped[len(marker):].strip() or stripped
    return None


def parse_duration(text: str) -> timedelta:
    """`30m`, `2h`, `1d` (snooze lengths staff type)."""
    m = _DURATION.match(text.strip())
    if m is None:
        raise DeskRefused(f"{text.strip()[:20]!r} is not a duration: use 30m, 2h or 1d.")
    amount, unit = int(m.group(1)), m.group(2).lower()
    delta = {"m": timedelta(minutes=amount), "min": timedelta(minutes=amount),
             "h": timedelta(hours=amount), "d": timedelta(days=amount)}[unit]
    if not timedelta(minutes=1) <= delta <= MAX_SNOOZE:
        raise DeskRefused("Snooze for between 1 minute and 30 days.")
    return delta


def answerable(faq: FaqLookup | None, faq_id: str) -> FaqEntry | None:
    """The entry when staff may send its answer (see `staff_may_send`)."""
    entry = faq.get(faq_id) if faq is not None else None
    return entry if staff_may_send(entry) else None


class DeskActions:
    """Staff actions, the pipeline's desk hooks and the outbox's failure hook, without Slack.

    The Slack desk (`bot.desk.Desk`) is this plus Slack: it sets `mirrors`, so every action
    also updates the card and the thread.
    """

    mirrors = False

    def __init__(self, db: Database, routing: RoutingStore, *, faq: FaqLookup | None = None,
                 store_name: str = "Our Store", default_language: str = "en",
                 staffed: bool = True, clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        #: a person answers escalations here: the bot may say so, and tells out-of-hours
        #: customers when the team is back
        self.staffed = staffed
        self.routing = routing
        self.faq = faq
        self.store_name = store_name
        self.default_language = default_language
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.wake_outbox: Callable[[], None] = lambda: None
        #: channels that deliver by storing (web chat) and who to tell when a reply is stored
        self.stored_delivery: frozenset[str] = frozenset()
        self.replies_stored: Callable[[str, str], None] = lambda _channel, _address: None
        self._stored: set[tuple[str, str]] = set()

    def attach(self, outbox: Any, workers: Any, channels: Mapping[str, Channel]) -> None:
        """Hook into the outbox (delivery failures), the workers (wake after commit) and the
        channels that deliver by storing (tell their waiting pages)."""
        outbox.on_failed.append(self.on_delivery_failed)
        workers.listeners.append(lambda _item, _outcome: self.wake())
        self.wake_outbox = outbox.wake
        self.stored_delivery = frozenset(name for name, channel in channels.items()
                                         if channel.delivers_by_storing)
        self.replies_stored = lambda name, address: channels[name].replies_stored(address)

    def wake(self) -> None:
        """Slack desk: deliver the jobs just queued."""

    def changed(self) -> None:
        """After the action's transaction committed: deliver what it queued."""
        self.wake()
        self.wake_outbox()
        stored, self._stored = self._stored, set()
        for channel, address in stored:
            self.replies_stored(channel, address)

    # --- DeskHook: called inside the handler's transaction ---------------------------------

    async def on_escalation(self, conn: AsyncConnection, *, escalation_id: int,
                            conversation_id: int) -> None:
        team = await self._route(conn, escalation_id)
        now = self.clock()
        if self.staffed and not team.is_open(now):
            row = (await conn.execute(select(CV.language).where(
                CV.id == conversation_id))).one()
            lang = row.language or self.default_language
            text = team.out_of_hours_text(now, lang)
            await self._to_customer(conn, conversation_id, text, lang, "bot",
                                    {"out_of_hours": team.name})
            await conn.execute(update(Escalation.__table__).where(ES.id == escalation_id)
                               .values(detail=f"out of hours: {text}"[:2000]))

    async def _route(self, conn: AsyncConnection, escalation_id: int) -> Any:
        """Pick the team (routing rules), record it and queue the card; returns the team."""
        row = (await conn.execute(
            select(ES.reason, ES.candidates, CV.channel, CV.language,
                   func.coalesce(CU.stage, CV.stage).label("stage"), CU.total_spent,
                   CU.orders_count)
            .join(Conversation.__table__, CV.id == ES.conversation_id)
            .join(Customer.__table__, CU.id == CV.customer_id)
            .where(ES.id == escalation_id))).one()
        tags = {t for c in row.candidates or () for t in self._entry_tags(c.get("faq_id"))}
        # the stage is the customer's (all channels), not this conversation's
        decision = self.routing.routing.decide({
            "language": row.language, "stage": row.stage, "channel": row.channel,
            "reason": row.reason, "faq_tag": sorted(tags), "total_spent": row.total_spent,
            "orders_count": row.orders_count})
        team = decision.team
        repost = decision.repost_after.total_seconds() / 60 if decision.repost_after else None
        await conn.execute(update(Escalation.__table__).where(ES.id == escalation_id).values(
            team=team.name, staff_channel=team.channel or self.staff_channel(),
            priority=decision.priority, repost_after_minutes=repost))
        await self._job(conn, "card", escalation_id)
        return team

    def staff_channel(self) -> str | None:
        return None

    async def on_customer_message(self, conn: AsyncConnection, *, conversation_id: int,
                                  message_id: int, author: str = "customer") -> None:
        """A message of a waiting or taken conversation: a customer's ends a snooze; the Slack
        desk also mirrors it into the thread."""
        esc = (await conn.execute(select(ES.id, ES.snoozed_until, ES.taken_by, CV.channel)
            .join(Conversation.__table__, CV.id == ES.conversation_id).where(
            ES.conversation_id == conversation_id, ES.status.in_(LIVE))
            .order_by(ES.id.desc()).limit(1))).first()
        if esc is None:
            return
        payload: dict[str, Any] = {"message_id": message_id}
        if author != "customer":
            payload["author"] = author
        await self._job(conn, "post", esc.id, payload)
        if author == "customer" and esc.channel == "whatsapp":  # the window state changed
            await self._job(conn, "update", esc.id)
        if author == "customer" and esc.snoozed_until is not None:
            await conn.execute(update(Escalation.__table__).where(ES.id == esc.id)
                               .values(snoozed_until=None))
            who = cards.mention(esc.taken_by) if esc.taken_by else "<!here>"
            await self._job(conn, "post", esc.id,
                            {"text": f"⏰ {who} the customer wrote: snooze ended."})
            await self._job(conn, "update", esc.id)

    def queue_notice(self, lang: str, now: datetime) -> str | None:
        """"Still in the queue", with when the team is back if it is closed now."""
        team = self.routing.routing.team(None)
        if not self.staffed or team.is_open(now):
            return None
        opens = team.next_open(now).astimezone(team.tz)
        names = DAY_NAMES.get(lang, DAY_NAMES["en"])
        return text_for("in_queue_opens", lang, self.default_language).format(
            when=f"{names[opens.weekday()]} {opens:%H:%M}", tz=team.tz.key)

    async def pending_survey(self, conn: AsyncConnection, *, identity_id: int,
                             rating: int) -> PendingSurvey | None:
        """The satisfaction question a "1".."5" from this customer answers, if any."""
        routing = self.routing.routing
        if not routing.survey:
            return None
        latest = (await conn.execute(select(CV.id, CV.status, CV.language).where(
            CV.identity_id == identity_id).order_by(CV.id.desc()).limit(1))).first()
        if latest is None or latest.status != ConversationStatus.RESOLVED:
            return None
        since = self.clock() - timedelta(hours=routing.survey_hours)
        esc = (await conn.execute(select(ES.id).where(
            ES.conversation_id == latest.id, ES.csat.is_(None), ES.csat_asked_at.is_not(None),
            ES.csat_asked_at >= since).order_by(ES.id.desc()).limit(1))).first()
        if esc is None:
            return None
        return PendingSurvey(int(latest.id), int(esc.id),
                             latest.language or self.default_language, rating)

    async def record_survey(self, conn: AsyncConnection, survey: PendingSurvey, *,
                            message_id: int) -> None:
        lang = survey.language or self.default_language
        await conn.execute(update(Escalation.__table__).where(ES.id == survey.escalation_id)
                           .values(csat=survey.rating))
        await self._to_customer(conn, survey.conversation_id, THANKS.get(lang, THANKS["en"]),
                                lang, "bot", {"csat_for": survey.escalation_id})
        await self._job(conn, "post", survey.escalation_id,
                        {"text": f"⭐ The customer rated this {survey.rating}/5."})
        await self._job(conn, "update", survey.escalation_id)

    # --- OutboxSender hook: inside the transaction that records the failure -----------------

    async def on_delivery_failed(self, conn: AsyncConnection, outbox_id: int,
                                 message: OutboundMessage, error: str) -> None:
        esc = (await conn.execute(select(ES.id).where(
            ES.conversation_id == message.conversation_id).order_by(ES.id.desc())
            .limit(1))).first()
        if esc is not None:
            await self._job(conn, "post", esc.id, {"failed_outbox": outbox_id, "error": error,
                                                   "preview": message.text[:300]})

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
            await self._to_customer(conn, e.conversation_id, SURVEY.get(lang, SURVEY["en"]),
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

    def _entry_tags(self, faq_id: Any) -> tuple[str, ...]:
        entry = self.faq.get(str(faq_id)) if self.faq and faq_id else None
        return entry.tags if entry else ()

    async def _job(self, conn: AsyncConnection, kind: str, esc_id: int,
                   payload: dict[str, Any] | None = None) -> None:
        if self.mirrors:
            await queue_job(conn, kind, esc_id, payload)

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

    async def _to_customer(self, conn: AsyncConnection, conversation_id: int, text: str,
                           lang: str | None, author: str, meta: dict[str, Any],
                           attachments: tuple[Attachment, ...] = ()) -> None:
        conv = (await conn.execute(select(CV.channel, CV.address)
                                   .where(CV.id == conversation_id))).one()
        last_in = (await conn.execute(select(func.max(MS.id)).where(
            MS.conversation_id == conversation_id, MS.direction == "in"))).scalar()
        await queue_replies(conn, [OutgoingReply(
            conversation_id=conversation_id, channel=conv.channel, text=text, language=lang,
            author=author, meta={"in_reply_to": last_in, **meta}, attachments=attachments)],
            stored_delivery=self.stored_delivery, now=datetime.now(UTC))
        if conv.channel in self.stored_delivery:
            self._stored.add((conv.channel, conv.address))

"""The desk's hooks into the service: the pipeline's, the outbox's and the workers'.

The composition root (bot/app.py) builds the desk and calls `attach` with the outbox and the
workers; these protocols are what the desk needs of them, so the desk never imports them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import (
    Conversation,
    ConversationStatus,
    Customer,
    Escalation,
)
from bot.desk import cards
from bot.desk.jobs import FaqLookup, queue_job
from bot.desk.routing import RoutingStore
from bot.desk.terms import (
    CU,
    CV,
    ES,
    LIVE,
    MS,
)
from bot.pipeline.rules import PendingSurvey
from bot.replies import OutgoingReply, queue_replies
from channels.base import Attachment, Channel, OutboundMessage
from core.phrases import text_for, weekday_name

if TYPE_CHECKING:
    from bot.worker import OutcomeListener

FailureHook = Callable[[AsyncConnection, int, OutboundMessage, str], Awaitable[None]]


class OutboxEvents(Protocol):
    """What the desk needs of the outbox: its failure hooks and a way to wake it."""

    on_failed: list[FailureHook]

    def wake(self) -> None: ...


class WorkerEvents(Protocol):
    """What the desk needs of the workers: to hear when a batch was handled."""

    listeners: list[OutcomeListener]


class DeskHooks:
    """The pipeline's desk hooks (`bot.pipeline.write.DeskHook`) and the outbox's failure hook.

    Called inside the handler's (or the outbox's) transaction: they change the escalation,
    queue what the customer must receive and, when the Slack desk is on (`mirrors`), the desk
    jobs that update its card and thread. `DeskActions` adds what staff do.
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

    def attach(self, outbox: OutboxEvents, workers: WorkerEvents,
               channels: Mapping[str, Channel]) -> None:
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
        when = f"{weekday_name(opens.weekday(), lang, self.default_language)} {opens:%H:%M}"
        return text_for("in_queue_opens", lang, self.default_language).format(
            when=when, tz=team.tz.key)

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
        thanks = text_for("csat_thanks", lang, self.default_language)
        await self._to_customer(conn, survey.conversation_id, thanks, lang, "bot",
                                {"csat_for": survey.escalation_id})
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

    # --- helpers ---------------------------------------------------------------------------

    def _entry_tags(self, faq_id: Any) -> tuple[str, ...]:
        entry = self.faq.get(str(faq_id)) if self.faq and faq_id else None
        return entry.tags if entry else ()

    async def _job(self, conn: AsyncConnection, kind: str, esc_id: int,
                   payload: dict[str, Any] | None = None) -> None:
        if self.mirrors:
            await queue_job(conn, kind, esc_id, payload)

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

"""The Slack staff desk: escalation cards, replies from threads, handoff, `/inbox`, re-posts.

Durability: the handler calls the desk inside the message transaction; the desk only writes
`desk_job` rows there (post the card, mirror a message, update the card). `run()` delivers them
to Slack afterwards through `bot.desk_jobs.DeskPoster`, in order per escalation, retrying while
Slack is down, so a card is never lost and never blocks the customer's reply. Staff actions
(buttons, thread replies, `/inbox`) change the database in one transaction that also queues the
customer message (outbox) and the card update (desk job). Business time comes from `clock`,
so tests control it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bot import desk_cards as cards
from bot.db.engine import Database
from bot.db.models import (
    ChannelState,
    Conversation,
    ConversationStatus,
    Customer,
    DeskJob,
    Escalation,
    Message,
    OutboxItem,
)
from bot.desk_jobs import DeskPoster, FaqLookup, queue_job, staff_may_send
from bot.errors import ChannelError, InputError
from bot.pipeline.rules import PendingSurvey
from bot.replies import OutgoingReply, queue_replies
from bot.routing import DAY_NAMES, RoutingStore
from bot.settings import Settings
from bot.texts import text_for
from channels.base import Attachment, Channel, OutboundMessage
from channels.edge import id_param
from channels.slack import (
    Profiles,
    SlackChannel,
    call_slack,
    files_of,
    is_human_message,
    with_links,
)
from faq.models import FaqEntry

log = logging.getLogger(__name__)
ES, CV, CU = Escalation.__table__.c, Conversation.__table__.c, Customer.__table__.c
MS, DJ, OB = Message.__table__.c, DeskJob.__table__.c, OutboxItem.__table__.c
OPEN, TAKEN, RESOLVED, RETURNED = "open", "taken", "resolved", "returned"
_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$")
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
HELP = ("`/inbox` lists waiting conversations and today's counts. "
        "`/inbox take 12`, `/inbox resolve 12`, `/inbox back 12` (back to the bot), "
        "`/inbox assign 12 @user`.")


class DeskRefused(InputError):
    """A staff action that cannot be done (unknown id, already resolved...); shown to them."""


def _insert_ignore(conn: AsyncConnection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def answerable(faq: FaqLookup | None, faq_id: str) -> FaqEntry | None:
    """The entry when staff may send its answer (see `staff_may_send`)."""
    entry = faq.get(faq_id) if faq is not None else None
    return entry if staff_may_send(entry) else None


class Desk:
    """Implements the handler's DeskHook and the OutboxSender failure hook."""

    def __init__(self, db: Database, client: AsyncWebClient, routing: RoutingStore, *,
                 default_channel: str, faq: FaqLookup | None = None,
                 profiles: Profiles | None = None, store_name: str = "Our Store",
                 default_language: str = "en", max_attempts: int = 50,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.db = db
        self.client = client
        self.routing = routing
        self.default_channel = default_channel
        self.faq = faq
        self.profiles = profiles or Profiles(client)
        self.store_name = store_name
        self.default_language = default_language
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.poster = DeskPoster(db, client, default_channel=default_channel, faq=faq,
                                 now=lambda: self.clock(), max_attempts=max_attempts)
        self.wakeup = asyncio.Event()
        self.wake_outbox: Callable[[], None] = lambda: None
        #: channels that deliver by storing (web chat) and who to tell when a reply is stored
        self.stored_delivery: frozenset[str] = frozenset()
        self.replies_stored: Callable[[str, str], None] = lambda _channel, _address: None
        self._stored: set[tuple[str, str]] = set()
        self.check_every = 30.0
        self.refresh_every = timedelta(minutes=5)
        self._refreshed: dict[int, datetime] = {}

    @classmethod
    def from_service(cls, settings: Settings, db: Database, channels: Mapping[str, Channel],
                     faq: FaqLookup | None, *,
                     clock: Callable[[], datetime] | None = None) -> Desk | None:
        """The desk when Slack is configured with a staff channel, else None."""
        slack = channels.get("slack")
        if not isinstance(slack, SlackChannel) or not settings.slack_staff_channel:
            return None
        desk = cls(db, slack.client, RoutingStore(settings.desk_routing_file),
                   default_channel=settings.slack_staff_channel, faq=faq,
                   profiles=slack.profiles, store_name=settings.store_name,
                   default_language=settings.default_language, clock=clock)
        slack.desk = desk
        desk.stored_delivery = frozenset(name for name, channel in channels.items()
                                         if channel.delivers_by_storing)
        desk.replies_stored = lambda name, address: channels[name].replies_stored(address)
        slack.app.action(re.compile(r"^desk_"))(desk._on_action)
        slack.app.command("/inbox")(desk._on_command)
        return desk

    def attach(self, outbox: Any, workers: Any) -> None:
        """Hook into the outbox (delivery failures) and the workers (wake after commit)."""
        outbox.on_failed.append(self.on_delivery_failed)
        workers.listeners.append(lambda _item, _outcome: self.wake())
        self.wake_outbox = outbox.wake

    def wake(self) -> None:
        self.wakeup.set()

    def is_staff_channel(self, channel: str) -> bool:
        return channel == self.default_channel or channel in self.routing.routing.channels()

    # --- DeskHook: called inside the handler's transaction ---------------------------------

    async def on_escalation(self, conn: AsyncConnection, *, escalation_id: int,
                            conversation_id: int) -> None:
        team = await self._route(conn, escalation_id)
        now = self.clock()
        if not team.is_open(now):
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
        routing = self.routing.routing
        # the stage is the customer's (all channels), not this conversation's
        decision = routing.decide({"language": row.language, "stage": row.stage,
                                   "channel": row.channel, "reason": row.reason,
                                   "faq_tag": sorted(tags), "total_spent": row.total_spent,
                                   "orders_count": row.orders_count})
        team = decision.team
        repost = decision.repost_after.total_seconds() / 60 if decision.repost_after else None
        await conn.execute(update(Escalation.__table__).where(ES.id == escalation_id).values(
            team=team.name, staff_channel=team.channel or self.default_channel,
            priority=decision.priority, repost_after_minutes=repost))
        await self._job(conn, "card", escalation_id)
        return team

    async def post_unposted(self) -> int:
        """Escalations raised while no desk was configured (or before this one existed) get
        their card now: nobody is left waiting unseen."""
        has_card = select(DJ.id).where(DJ.escalation_id == ES.id, DJ.kind == "card")
        async with self.db.write() as conn:
            ids = (await conn.execute(select(ES.id).where(
                ES.status.in_((OPEN, TAKEN)), ES.staff_thread.is_(None), ~has_card.exists())
                .order_by(ES.id))).scalars().all()
            for esc_id in ids:
                await self._route(conn, esc_id)
        if ids:
            log.info("desk: posting %d escalation(s) raised before the desk was on", len(ids))
            self.wake()
        return len(ids)

    async def on_customer_message(self, conn: AsyncConnection, *, conversation_id: int,
                                  message_id: int, author: str = "customer") -> None:
        """Mirror a message of a waiting or taken conversation (the customer's, or the bot's
        answer while the customer waits) into its staff thread."""
        esc = (await conn.execute(select(ES.id).where(
            ES.conversation_id == conversation_id, ES.status.in_((OPEN, TAKEN)))
            .order_by(ES.id.desc()).limit(1))).first()
        if esc is not None:
            payload: dict[str, Any] = {"message_id": message_id}
            if author != "customer":
                payload["author"] = author
            await self._job(conn, "post", esc.id, payload)

    def queue_notice(self, lang: str, now: datetime) -> str | None:
        """"Still in the queue", with when the team is back if it is closed now."""
        team = self.routing.routing.team(None)
        if team.is_open(now):
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

    # --- staff actions (buttons, /inbox, thread replies) ----------------------------------

    async def take(self, conn: AsyncConnection, esc_id: int, user: str,
                   by: str | None = None) -> str:
        e = await self._open_escalation(conn, esc_id)
        now = self.clock()
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id).values(
            status=TAKEN, taken_by=user, taken_at=e.taken_at or now))
        await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                           .values(status=ConversationStatus.HUMAN, assigned_to=user,
                                   updated_at=now))
        note = f"👤 <@{by}> assigned this to <@{user}>." if by and by != user \
            else f"👤 <@{user}> took this."
        await self._job(conn, "post", esc_id, {"text": note})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} is now with <@{user}>."

    async def resolve(self, conn: AsyncConnection, esc_id: int, user: str) -> str:
        e = await self._open_escalation(conn, esc_id)
        now = self.clock()
        survey = self.routing.routing.survey
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id).values(
            status=RESOLVED, resolved_at=now, taken_by=e.taken_by or user,
            csat_asked_at=now if survey else None))
        await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                           .values(status=ConversationStatus.RESOLVED, resolved_at=now,
                                   updated_at=now))
        if survey:
            lang = e.language or self.default_language
            await self._to_customer(conn, e.conversation_id, SURVEY.get(lang, SURVEY["en"]),
                                    lang, "bot", {"survey_for": esc_id})
        await self._job(conn, "post", esc_id, {"text": f"✅ <@{user}> resolved this."})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} resolved."

    async def back_to_bot(self, conn: AsyncConnection, esc_id: int, user: str) -> str:
        e = await self._open_escalation(conn, esc_id)
        now = self.clock()
        await conn.execute(update(Escalation.__table__).where(ES.id == esc_id)
                           .values(status=RETURNED, resolved_at=now))
        await conn.execute(update(Conversation.__table__).where(CV.id == e.conversation_id)
                           .values(status=ConversationStatus.BOT, assigned_to=None,
                                   updated_at=now))
        await self._job(conn, "post", esc_id,
                        {"text": f"🤖 <@{user}> handed this back to the bot."})
        await self._job(conn, "update", esc_id)
        return f"#{esc_id} is back with the bot."

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

    async def _send_entry(self, conn: AsyncConnection, e: Row[Any], entry: FaqEntry, user: str,
                          what: str) -> str:
        text, lang = entry.answer_for(e.language or self.default_language,
                                      self.default_language, {"store_name": self.store_name})
        await self._staff_send(conn, e, user, text, (), {"faq_id": entry.id, "suggested": True},
                               lang=lang)
        await self._job(conn, "post", e.id, {
            "text": f"📨 <@{user}> sent {what} `{entry.id}` ({lang}):\n"
                    f"> {cards.escape(cards.short(text))}"})
        return f"Sent `{entry.id}` for #{e.id}."

    async def retry(self, conn: AsyncConnection, outbox_id: int, esc_id: int, user: str) -> str:
        row = (await conn.execute(select(OB.status, OB.message_id)
                                  .where(OB.id == outbox_id))).first()
        if row is None or row.status != "failed":
            raise DeskRefused("That reply is not failed any more (already retried or sent).")
        await conn.execute(update(OutboxItem.__table__).where(OB.id == outbox_id).values(
            status="pending", attempts=0, next_attempt_at=datetime.now(UTC), last_error=None))
        await conn.execute(update(Message.__table__).where(MS.id == row.message_id)
                           .values(status="pending", error=None))
        await self._job(conn, "post", esc_id, {"text": f"🔁 <@{user}> retried the delivery."})
        return "Delivery queued again."

    async def on_staff_message(self, event: Mapping[str, Any], *,
                               event_id: str | None) -> None:
        """A message in a desk channel: a thread reply to a card goes to the customer."""
        thread, ts = event.get("thread_ts"), str(event.get("ts") or "")
        if not thread or thread == ts or not is_human_message(event):
            return
        user, channel = str(event["user"]), str(event.get("channel"))
        text = str(event.get("text") or "")
        name = (await self.profiles.get(user)).get("name")
        async with self.db.write() as conn:
            e = await self._escalation(conn, staff=(channel, str(thread)))
            if e is None or not await self._first_time(conn, f"slack:{channel}:{ts}", event_id):
                return
            command = text.strip()
            if command.lower().startswith("answer:"):  # an FAQ entry's text, in their language
                try:
                    await self.answer(conn, e.id, command[len("answer:"):], user)
                except DeskRefused as exc:
                    await self._job(conn, "post", e.id, {"text": f"⚠️ <@{user}> {exc}"})
                self._changed()
                return
            if text.strip().lower().startswith("note:"):
                await conn.execute(insert(Message.__table__).values(
                    conversation_id=e.conversation_id, direction="note", channel="slack",
                    external_id=f"{channel}:{ts}", author=f"staff:{user}", text=text,
                    status="internal", meta={"staff_name": name}, created_at=datetime.now(UTC)))
                return
            files = files_of(event)  # every channel gets at least the links in the text
            await self._staff_send(conn, e, user, with_links(text, files), files,
                                   {"staff_name": name, "slack_ts": ts})
        self._changed()

    # --- Slack listeners -------------------------------------------------------------------

    async def _on_action(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any],
                         action: dict[str, Any]) -> None:
        await ack()
        user = str(body.get("user", {}).get("id", ""))
        kind, value = action.get("action_id", ""), str(action.get("value", ""))
        if kind == cards.ACTIONS["answer"]:  # the picker: "<escalation id>:<entry id>"
            value = str((action.get("selected_option") or {}).get("value", ""))
        try:
            if kind == cards.ACTIONS["answer"]:
                esc, _, faq_id = value.partition(":")
                async with self.db.write() as conn:
                    await self.answer(conn, id_param(esc, "value"), faq_id, user)
                self._changed()
                return
            ids = [id_param(v, "value") for v in value.split(":")]
            async with self.db.write() as conn:
                if kind == cards.ACTIONS["retry"] and len(ids) == 2:
                    await self.retry(conn, ids[0], ids[1], user)
                else:
                    await self._do(conn, kind.removeprefix("desk_"), ids[0], user)
        except (DeskRefused, InputError, ValueError, IndexError) as exc:
            channel = (body.get("channel") or {}).get("id")
            log.info("desk action %s %s refused: %s", kind, value, exc)
            if channel:
                try:
                    await call_slack(self.client.chat_postEphemeral(
                        channel=channel, user=user, text=str(exc)))
                except ChannelError as err:
                    log.warning("could not tell %s why: %s", user, err)
            return
        self._changed()

    async def _do(self, conn: AsyncConnection, verb: str, esc_id: int, user: str) -> str:
        actions: dict[str, Callable[[AsyncConnection, int, str], Awaitable[str]]] = {
            "take": self.take, "resolve": self.resolve, "back": self.back_to_bot,
            "suggest": self.suggest}
        if verb not in actions:
            raise DeskRefused(f"Unknown action {verb!r}. {HELP}")
        return await actions[verb](conn, esc_id, user)

    async def _on_command(self, ack: Callable[..., Awaitable[Any]],
                          command: dict[str, Any]) -> None:
        await ack(text=await self.command(str(command.get("text") or ""),
                                          str(command.get("user_id") or "")))

    async def command(self, text: str, user: str) -> str:
        """`/inbox [list | take N | resolve N | back N | assign N @user | help]`."""
        parts = text.split()
        if not parts or parts[0] in ("list", "ls"):
            return await self.summary()
        verb, args = parts[0].lower(), parts[1:]
        try:
            esc_id = int(args[0].lstrip("#")) if args else None
        except ValueError:
            esc_id = None
        if esc_id is None or verb not in ("take", "resolve", "back", "assign"):
            return HELP
        try:
            async with self.db.write() as conn:
                if verb == "assign":
                    m = _USER.match(args[1]) if len(args) == 2 else None
                    if m is None:
                        return "Usage: `/inbox assign 12 @user` (pick the user from the list)."
                    reply = await self.take(conn, esc_id, m.group(1), by=user)
                else:
                    reply = await self._do(conn, verb, esc_id, user)
        except DeskRefused as exc:
            return str(exc)
        self._changed()
        return reply

    async def summary(self) -> str:
        now = self.clock()
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        async with self.db.read() as conn:
            rows = (await conn.execute(
                select(ES.id, ES.status, ES.reason, ES.created_at, ES.taken_by, CV.channel,
                       CV.language, CU.display_name)
                .join(Conversation.__table__, CV.id == ES.conversation_id)
                .join(Customer.__table__, CU.id == CV.customer_id)
                .where(ES.status.in_((OPEN, TAKEN))).order_by(ES.id).limit(25))).all()
            counts = {k: int((await conn.execute(select(func.count()).select_from(
                Escalation.__table__).where(cond))).scalar_one()) for k, cond in (
                ("new", ES.created_at >= day),
                ("resolved", (ES.resolved_at >= day) & (ES.status == RESOLVED)),
                ("answered", ES.first_response_at >= day))}
            csat = (await conn.execute(select(func.avg(ES.csat)).where(
                ES.resolved_at >= day, ES.csat.is_not(None)))).scalar()
        lines = [f"*Waiting or in progress* ({len(rows)}):" if rows else "Nobody is waiting. 🎉"]
        for r in rows:
            state = f"with <@{r.taken_by}>" if r.status == TAKEN else \
                f"waiting {cards.minutes((now - r.created_at).total_seconds())}"
            lines.append(f"• *#{r.id}* {cards.escape(r.display_name or 'customer')} "
                         f"({cards.CHANNEL_NAMES.get(r.channel, r.channel)}, {r.language or '?'})"
                         f" · {cards.REASONS.get(r.reason, r.reason)} · {state}")
        lines.append(f"*Today:* {counts['new']} escalated · {counts['answered']} answered · "
                     f"{counts['resolved']} resolved"
                     + (f" · satisfaction {float(csat):.1f}/5" if csat is not None else ""))
        return "\n".join(lines)

    # --- delivery loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last_check = 0.0
        try:
            await self.post_unposted()
        except Exception:  # tried again at the next start
            log.exception("desk: could not post the earlier escalations")
        while not stop.is_set():
            delivered = 0
            try:
                delivered = await self.poster.deliver_due()
                if loop.time() - last_check >= self.check_every:
                    last_check = loop.time()
                    await self.check_untaken()
                    await self.refresh_waiting()
            except Exception:
                log.exception("desk: delivery loop failed; retrying in 1 s")
                await asyncio.sleep(1)
            if not delivered:
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=0.5)

    async def check_untaken(self) -> int:
        """Re-post escalations nobody took within their team's time, mentioning on-call."""
        now = self.clock()
        routing = self.routing.routing
        count = 0
        async with self.db.write() as conn:
            rows = (await conn.execute(select(ES.id, ES.team, ES.created_at,
                                              ES.repost_after_minutes).where(
                ES.status == OPEN, ES.reposted_at.is_(None)))).all()
            for r in rows:
                team = routing.team(r.team)
                wait = team.repost_after if r.repost_after_minutes is None \
                    else timedelta(minutes=r.repost_after_minutes)
                due = team.next_open(r.created_at) + wait
                if now < due:
                    continue
                waited = cards.minutes((now - r.created_at).total_seconds())
                mention = f"<!subteam^{team.oncall}>" if team.oncall else "<!here>"
                await self._job(conn, "post", r.id, {
                    "text": f"⏰ {mention} nobody has taken escalation #{r.id} for {waited}.",
                    "broadcast": True})
                await conn.execute(update(Escalation.__table__).where(ES.id == r.id)
                                   .values(reposted_at=now))
                await self._job(conn, "update", r.id)
                count += 1
        if count:
            self.wake()
        return count

    async def refresh_waiting(self) -> int:
        """Edit the cards of waiting escalations every few minutes, so the waiting time shown
        stays true between state changes (cosmetic: the last refresh is kept in memory)."""
        now = self.clock()
        async with self.db.write() as conn:
            ids = (await conn.execute(select(ES.id).where(
                ES.status == OPEN, ES.staff_thread.is_not(None)))).scalars().all()
            due = [i for i in ids if now - self._refreshed.setdefault(i, now)
                   >= self.refresh_every]
            for esc_id in due:
                await self._job(conn, "update", esc_id)
                self._refreshed[esc_id] = now
        for gone in set(self._refreshed) - set(ids):
            del self._refreshed[gone]
        if due:
            self.wake()
        return len(due)

    # --- helpers ---------------------------------------------------------------------------

    def _changed(self) -> None:
        self.wake()
        self.wake_outbox()
        stored, self._stored = self._stored, set()
        for channel, address in stored:
            self.replies_stored(channel, address)

    def _entry_tags(self, faq_id: Any) -> tuple[str, ...]:
        entry = self.faq.get(str(faq_id)) if self.faq and faq_id else None
        return entry.tags if entry else ()

    async def _job(self, conn: AsyncConnection, kind: str, esc_id: int,
                   payload: dict[str, Any] | None = None) -> None:
        await queue_job(conn, kind, esc_id, payload)
    async def _first_time(self, conn: AsyncConnection, key: str, event_id: str | None) -> bool:
        """Record a Slack message as handled; False if it already was (Slack retry)."""
        stmt = _insert_ignore(conn, ChannelState.__table__).returning(ChannelState.__table__.c.key)
        row = (await conn.execute(stmt, {"key": key, "value": {"event_id": event_id},
                                         "updated_at": datetime.now(UTC)})).first()
        return row is not None

    async def _escalation(self, conn: AsyncConnection, *, esc_id: int | None = None,
                          staff: tuple[str, str] | None = None) -> Row[Any] | None:
        stmt = (select(ES.id, ES.status, ES.conversation_id, ES.taken_by, ES.taken_at,
                       ES.first_response_at, ES.candidates, CV.language, CV.channel)
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
        if e.status not in (OPEN, TAKEN):
            raise DeskRefused(f"#{esc_id} is already closed ({e.status}).")
        return e

    async def _staff_send(self, conn: AsyncConnection, e: Row[Any], user: str, text: str,
                          attachments: tuple[Attachment, ...], meta: dict[str, Any], *,
                          lang: str | None = None) -> None:
        """A staff message to the customer, on their channel, in their conversation."""
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

"""Durable Slack posts for the staff desk: `desk_job` rows and the loop that delivers them.

The desk never calls Slack inside a transaction. It writes a job (post the card, copy a message
into the thread, edit the card) in the same transaction as the change, with `queue_job`; the
`DeskPoster` delivers the jobs afterwards, in id order per escalation, waiting out Slack's
Retry-After and outages. A card is rendered from the database when it is delivered, so an edit
always shows the latest state however many changes were queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, Protocol

from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import Conversation, Customer, DeskJob, Escalation, Message, Order
from bot.desk import cards
from bot.jobs import DESK_JOBS, due_rows
from channels.slack_api import call_slack
from core.errors import ChannelError, ChannelPermanentError, ChannelRateLimited
from faq.models import FaqEntry

log = logging.getLogger(__name__)
ES, CV, CU = Escalation.__table__.c, Conversation.__table__.c, Customer.__table__.c
MS, DJ, OR = Message.__table__.c, DeskJob.__table__.c, Order.__table__.c
_CONFIG_ERRORS = {"not_in_channel", "channel_not_found"}  # fixable by inviting the app


def customer_name(name: str | None, email: str | None, phone: str | None, channel: str,
                  address: str) -> str:
    """Who staff are talking to: a name, else a contact, never the web chat's visitor token."""
    if name or email or phone:
        return str(name or email or phone)
    if channel == "webchat":
        return "Web chat visitor"
    return address.removeprefix("whatsapp:")


class FaqLookup(Protocol):
    def get(self, entry_id: str) -> FaqEntry | None: ...

    @property
    def entries(self) -> list[FaqEntry]: ...


def staff_may_send(entry: FaqEntry | None) -> bool:
    """An entry whose answer staff may send: it has one, and it is neither a hand-over line
    (escalate-only) nor small talk."""
    return entry is not None and not entry.escalate and bool(entry.answers) \
        and entry.kind == "answer"


def answer_options(faq: FaqLookup | None, first: Sequence[str]) -> list[tuple[str, str]]:
    """(entry id, label) for the card's "Send FAQ answer" picker: the bot's candidates first,
    then every other answerable entry, at most Slack's 100 options."""
    if faq is None:
        return []
    ordered = [faq.get(i) for i in first] + sorted(faq.entries, key=lambda e: e.id)
    seen: set[str] = set()
    options = []
    for entry in ordered:
        if entry is None or entry.id in seen or not staff_may_send(entry):
            continue
        seen.add(entry.id)
        question = entry.questions[0] if entry.questions else ""
        options.append((entry.id, f"{entry.id}: {question}"))
    return options[:100]


async def queue_job(conn: AsyncConnection, kind: str, esc_id: int,
                    payload: dict[str, Any] | None = None) -> None:
    """Owe Slack a post (kind "card", "update" or "post"), inside the caller's transaction."""
    now = datetime.now(UTC)
    await conn.execute(insert(DeskJob.__table__).values(
        kind=kind, escalation_id=esc_id, payload=payload, status="pending", attempts=0,
        next_attempt_at=now, created_at=now))


class DeskPoster:
    """Delivers desk jobs. `now` is the desk's business clock (waiting times on cards);
    retries are scheduled on real time."""

    def __init__(self, db: Database, client: AsyncWebClient, *, default_channel: str,
                 faq: FaqLookup | None, now: Callable[[], datetime],
                 max_attempts: int = 50) -> None:
        self.db = db
        self.client = client
        self.default_channel = default_channel
        self.faq = faq
        self.now = now
        self.max_attempts = max_attempts

    async def deliver_due(self) -> int:
        """Deliver pending desk jobs in id order; one escalation's jobs never overtake."""
        now = datetime.now(UTC)
        async with self.db.read() as conn:
            jobs = (await conn.execute(select(DJ.id, DJ.kind, DJ.escalation_id, DJ.payload,
                                              DJ.attempts, DJ.next_attempt_at)
                                       .where(DJ.status == "pending").order_by(DJ.id)
                                       .limit(100))).all()
        blocked: set[int] = set()
        done = 0
        for job in due_rows(jobs, now, blocked, key=attrgetter("escalation_id")):
            try:
                extra = await self._perform(job)
            except ChannelError as exc:
                if not await self._job_failed(job, exc):
                    blocked.add(job.escalation_id)
                continue
            except Exception as exc:  # a bug must not lose the job
                log.exception("desk job %d (%s) crashed", job.id, job.kind)
                await self._job_failed(job, exc)
                blocked.add(job.escalation_id)
                continue
            async with self.db.write() as conn:
                if extra:
                    await conn.execute(update(Escalation.__table__)
                                       .where(ES.id == job.escalation_id).values(extra))
                await conn.execute(update(DeskJob.__table__).where(DJ.id == job.id).values(
                    DESK_JOBS.finished(job.attempts + 1, datetime.now(UTC))))
            done += 1
        return done

    async def _job_failed(self, job: Row[Any], exc: Exception) -> bool:
        """Schedule a retry, or give up; True if the job is finished (given up)."""
        attempts = job.attempts + 1
        code = getattr(exc, "code", None)
        retry = DESK_JOBS.retry(
            attempts, f"{type(exc).__name__}: {exc}", datetime.now(UTC),
            max_attempts=self.max_attempts,
            delay=exc.retry_after if isinstance(exc, ChannelRateLimited) else None,
            permanent=isinstance(exc, ChannelPermanentError) and code not in _CONFIG_ERRORS)
        then = "; giving up" if retry.gave_up else f", retry in {retry.wait:.0f} s"
        log.log(logging.ERROR if retry.gave_up else logging.WARNING,
                "desk job %d (%s, escalation %d) attempt %d failed%s: %s", job.id, job.kind,
                job.escalation_id, attempts, then, exc)
        async with self.db.write() as conn:
            await conn.execute(update(DeskJob.__table__).where(DJ.id == job.id)
                               .values(retry.values))
        return retry.gave_up

    async def _perform(self, job: Row[Any]) -> dict[str, Any] | None:
        """One Slack call for one job; returns escalation columns to store (the card ts)."""
        data = await self._card_data(job.escalation_id)
        if data is None:
            return None
        d, channel, thread = data
        if job.kind == "card" and thread is None:
            text, blocks = cards.card(d)
            resp = await call_slack(self.client.chat_postMessage(channel=channel, text=text,
                                                                 blocks=blocks))
            return {"staff_channel": resp.get("channel") or channel,
                    "staff_thread": resp.get("ts")}
        if thread is None:  # the card was never posted (given up): nothing to attach to
            log.warning("desk job %d: escalation %d has no card; skipped", job.id,
                        job.escalation_id)
            return None
        if job.kind in ("card", "update"):
            text, blocks = cards.card(d)
            await call_slack(self.client.chat_update(channel=channel, ts=thread, text=text,
                                                     blocks=blocks))
            return None
        payload = job.payload or {}
        kwargs: dict[str, Any] = {"channel": channel, "thread_ts": thread}
        if "message_id" in payload:
            async with self.db.read() as conn:
                m = (await conn.execute(select(MS.text, MS.attachments)
                                        .where(MS.id == payload["message_id"]))).one()
            who = "Bot" if payload.get("author") == "bot" else d.customer
            kwargs["text"] = cards.mirror(who, m.text, m.attachments or [])
        elif "failed_outbox" in payload:
            kwargs["text"], kwargs["blocks"] = cards.failure(
                payload["failed_outbox"], job.escalation_id, str(payload.get("error")),
                str(payload.get("preview") or ""))
        else:
            kwargs["text"] = str(payload.get("text") or "")
            if payload.get("broadcast"):
                kwargs["reply_broadcast"] = True
        await call_slack(self.client.chat_postMessage(**kwargs))
        return None

    async def _card_data(self, esc_id: int) -> tuple[cards.CardData, str, str | None] | None:
        async with self.db.read() as conn:
            r = (await conn.execute(
                select(Escalation.__table__, CV.channel, CV.language,
                       func.coalesce(CU.stage, CV.stage).label("stage"), CU.display_name,
                       CU.email, CU.phone, CV.address, CU.orders_count, CU.total_spent,
                       CV.customer_id, CV.last_inbound_at)
                .join(Conversation.__table__, CV.id == ES.conversation_id)
                .join(Customer.__table__, CU.id == CV.customer_id)
                .where(ES.id == esc_id))).first()
            if r is None:
                return None
            msgs = (await conn.execute(select(MS.author, MS.text, MS.attachments).where(
                MS.conversation_id == r.conversation_id, MS.direction.in_(("in", "out")))
                .order_by(MS.id.desc()).limit(6))).all()
            held = int((await conn.execute(select(func.count()).select_from(
                Message.__table__).where(MS.conversation_id == r.conversation_id,
                                         MS.status == "held"))).scalar_one())
            last = (await conn.execute(select(OR.number, OR.status, OR.placed_at, OR.currency)
                                       .where(OR.customer_id == r.customer_id)
                                       .order_by(OR.placed_at.desc(), OR.id.desc()).limit(1))
                    ).first()
        candidates = []
        for c in r.candidates or ():  # only entries staff may send (not hand-over lines)
            entry = self.faq.get(str(c.get("faq_id"))) if self.faq else None
            if entry is None or not staff_may_send(entry):
                continue
            question = entry.questions[0] if entry.questions else ""
            candidates.append((str(c.get("faq_id")), question, float(c.get("score") or 0)))
        options = answer_options(self.faq, [c[0] for c in candidates])
        detail = r.detail or ""
        data = cards.CardData(
            escalation_id=r.id, status=r.status, reason=r.reason,
            customer=customer_name(r.display_name, r.email, r.phone, r.channel, r.address),
            email=r.email, phone=r.phone, channel=r.channel, language=r.language,
            stage=r.stage, team=r.team, created_at=r.created_at, now=self.now(),
            taken_by=r.taken_by, taken_at=r.taken_at, first_response_at=r.first_response_at,
            resolved_at=r.resolved_at, reposted_at=r.reposted_at, csat=r.csat,
            out_of_hours=detail.removeprefix("out of hours: ") if detail.startswith(
                "out of hours: ") else None,
            messages=[cards.CardMessage(m.author, m.text, len(m.attachments or ()))
                      for m in reversed(msgs)],
            candidates=candidates, answer_options=options, priority=bool(r.priority),
            orders_count=r.orders_count or 0,
            total_spent=float(r.total_spent or 0.0),
            currency=last.currency if last is not None else "",
            snoozed_until=r.snoozed_until, last_inbound_at=r.last_inbound_at, held=held,
            last_order=None if last is None else (
                (last.number or "").upper(), last.status, last.placed_at))
        return data, r.staff_channel or self.default_channel, r.staff_thread

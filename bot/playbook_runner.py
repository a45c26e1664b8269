"""The playbook scheduler: due steps out through the outbox, each exactly once.

Every PLAYBOOK_TICK_SECONDS, in every worker process, the runner sweeps for new occurrences
(stage changes, CSAT answers, lapses) and takes the due `playbook_job` rows one by one. A row
is claimed with `UPDATE ... WHERE id = :id AND state = 'scheduled'` in the same transaction
that decides it and queues its message: on PostgreSQL a second process blocks on the row and
then finds it no longer scheduled; on SQLite writers take turns. If the process dies before
the commit nothing happened, and the step is still due after the restart; after the commit
the message is the outbox's, which delivers it (retries, statuses) like any reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import string
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot import consent, surveys
from bot.customers import resolve_customer
from bot.db.engine import Database
from bot.db.models import (
    Checkout,
    Conversation,
    Customer,
    Escalation,
    Message,
    Order,
    PlaybookJob,
    WebchatVisitor,
)
from bot.jobs import PLAYBOOK_STEPS
from bot.order_context import _facts, variables_for
from bot.playbook_jobs import (
    PlaybookSource,
    sweep_bot_answered,
    sweep_csat,
    sweep_lapsed,
    sweep_stage_changes,
    sweep_survey_answers,
)
from bot.playbook_rules import Due, Target, Verdict, judge
from bot.playbooks import Step
from bot.replies import OutgoingReply, queue_replies
from core.clock import Clock
from core.phrases import text_for

log = logging.getLogger(__name__)
PJ, CV, CU = PlaybookJob.__table__.c, Conversation.__table__.c, Customer.__table__.c
MS, OR, ES = Message.__table__.c, Order.__table__.c, Escalation.__table__.c
CH = Checkout.__table__.c
WV = WebchatVisitor.__table__.c
MAX_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    store_name: str
    default_language: str
    public_url: str
    email_from: str | None
    cap: int = 2
    quiet: Any = None  # (start, end) times or None
    tz: str = "UTC"
    unsubscribe_secret: str | None = None


class PlaybookRunner:
    def __init__(self, db: Database, source: PlaybookSource, clock: Clock, config: RunnerConfig,
                 *, channels: Collection[str], stored_delivery: Collection[str],
                 interval: float,
                 on_queued: Callable[[list[tuple[str, str]]], None] | None = None,
                 batch: int = 100) -> None:
        self.db = db
        self.source = source
        self.clock = clock
        self.config = config
        self.channels = frozenset(channels)
        self.stored_delivery = frozenset(stored_delivery)
        self.interval = interval
        self.on_queued = on_queued
        self.batch = batch
        self.tz = ZoneInfo(config.tz)
        self.ticks = 0  # tests wait on it instead of sleeping
        self._secret: bytes | None = None
        self._stored: list[tuple[str, str]] = []  # (channel, address) delivered by storing
        self._lapsed: dict[timedelta, tuple[datetime, int]] = {}  # the lapse sweep's cursor

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("playbooks: tick failed; retrying at the next one")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval)

    async def run_once(self) -> int:
        """One sweep and the steps due now; returns how many messages were queued."""
        playbooks = self.source.playbooks
        now = self.clock()
        if playbooks.playbooks:
            try:  # each in short transactions of its own (see playbook_jobs._fire_in_slices)
                await sweep_stage_changes(self.db, playbooks, now=now)
                await sweep_csat(self.db, playbooks, now=now)
                await sweep_survey_answers(self.db, playbooks, now=now)
                await sweep_bot_answered(self.db, playbooks, now=now)
                await sweep_lapsed(self.db, playbooks, now=now, since=self._lapsed)
            except Exception as exc:  # due steps still go out
                log.error("playbooks: sweep failed (%s); retrying at the next tick",
                          type(exc).__name__)
                log.debug("playbooks: sweep failure", exc_info=True)
        async with self.db.read() as conn:
            due = (await conn.execute(select(PJ.id).where(
                PJ.state == "scheduled", PJ.due_at <= now).order_by(PJ.due_at, PJ.id)
                .limit(self.batch))).scalars().all()
        if due and self._secret is None:  # its own transaction: never inside a job's
            self._secret = await consent.unsubscribe_secret(self.db,
                                                            self.config.unsubscribe_secret)
        queued = 0
        for job_id in due:
            queued += await self._one(int(job_id))
        self.ticks += 1
        stored, self._stored = self._stored, []
        if queued and self.on_queued is not None:
            self.on_queued(stored)
        return queued

    async def _one(self, job_id: int) -> int:
        try:
            async with self.db.write() as conn:
                return await self._decide(conn, job_id)
        except Exception as exc:  # one bad step must not hold the others
            # the type only: a database error's text may quote a message body
            log.error("playbooks: job %d failed (%s); retried later", job_id,
                      type(exc).__name__)
            log.debug("playbooks: job %d failure", job_id, exc_info=True)
            await self._failed(job_id, f"failed: {type(exc).__name__}")
            return 0

    async def _decide(self, conn: AsyncConnection, job_id: int) -> int:
        now = self.clock()
        claimed = await conn.execute(update(PlaybookJob.__table__).where(
            PJ.id == job_id, PJ.state == "scheduled", PJ.due_at <= now)
            .values(attempts=PJ.attempts + 1))
        if claimed.rowcount != 1:
            return 0  # another process has it, or it was cancelled meanwhile
        job = (await conn.execute(select(PlaybookJob.__table__).where(PJ.id == job_id))).one()
        due = await self._context(conn, job, now)
        verdict = judge(due)
        if verdict is not None:
            await self._record(conn, job, verdict, now)
            return 0
        assert due.step is not None and due.target is not None
        message_id, conversation_id = await self._queue(conn, job, due.step, due.target, due)
        await conn.execute(update(PlaybookJob.__table__).where(PJ.id == job.id).values(
            state="sent", reason=None, message_id=message_id, conversation_id=conversation_id,
            channel=due.target.channel, done_at=now))
        log.info("playbooks: %s step %d queued for customer %d on %s", job.playbook, job.step,
                 job.customer_id, due.target.channel)
        return 1

    async def _record(self, conn: AsyncConnection, job: Any, verdict: Verdict,
                      now: datetime) -> None:
        values: dict[str, Any] = {"state": verdict.state, "reason": verdict.reason[:300]}
        if verdict.due_at is not None:
            values["due_at"] = verdict.due_at
            values["attempts"] = job.attempts - 1  # a move is not a failed attempt
        else:
            values["done_at"] = now
        await conn.execute(update(PlaybookJob.__table__).where(PJ.id == job.id).values(values))
        log.info("playbooks: %s step %d for customer %d %s: %s", job.playbook, job.step,
                 job.customer_id, verdict.state, verdict.reason)

    async def _failed(self, job_id: int, error: str) -> None:
        async with self.db.write() as conn:
            attempts = (await conn.execute(select(PJ.attempts).where(PJ.id == job_id))
                        ).scalar() or 0
            now = self.clock()
            retry = PLAYBOOK_STEPS.retry(attempts + 1, error[:300], now,
                                         max_attempts=MAX_ATTEMPTS)
            values = dict(retry.values)
            if retry.gave_up:
                values["done_at"] = now
            await conn.execute(update(PlaybookJob.__table__).where(
                PJ.id == job_id, PJ.state == "scheduled").values(values))

    # --- what the rules look at ----------------------------------------------------------

    async def _context(self, conn: AsyncConnection, job: Any, now: datetime) -> Due:
        playbook = self.source.playbooks.get(job.playbook)
        step = playbook.step(job.step) if playbook is not None else None
        cu = (await conn.execute(select(CU.stage, CU.language, CU.orders_count,
                                        CU.total_spent, CU.email, CU.phone)
                                 .where(CU.id == job.customer_id))).one()
        target = await self._target(conn, job, cu)
        cid, since = job.customer_id, job.fired_at
        data = job.data or {}
        inbound = (await conn.execute(select(func.max(CV.last_inbound_at)).where(
            CV.customer_id == cid))).scalar()
        channel = target.channel if target is not None else ""
        return Due(
            job=job, playbook=playbook, step=step, now=now, stage=cu.stage,
            language=(target.language if target else None) or cu.language
            or self.config.default_language,
            orders_count=cu.orders_count or 0, total_spent=float(cu.total_spent or 0),
            last_csat=await self._last_csat(conn, cid),
            do_not_contact=await consent.do_not_contact(conn, cid),
            replied=inbound is not None and inbound > since,
            ordered=(cu.orders_count or 0) > int(data.get("orders", cu.orders_count or 0)),
            opted_out=await consent.opted_out_since(conn, cid, since),
            opted_in=bool(channel) and await consent.opted_in(conn, cid, channel),
            checkout_completed=await self._checkout_done(conn, data.get("checkout")),
            asked_lately=step is not None and step.ask is not None
            and await surveys.asked_within(conn, cid, step.ask, now),
            marketing_sent_week=int((await conn.execute(select(func.count()).where(
                PJ.customer_id == cid, PJ.state == "sent", PJ.kind == "marketing",
                PJ.done_at > now - timedelta(days=7)))).scalar() or 0),
            target=target, channels=self.channels, cap=self.config.cap,
            quiet=self.config.quiet, tz=self.tz)

    async def _target(self, conn: AsyncConnection, job: Any, cu: Any) -> Target | None:
        """The job's conversation, else the customer's latest on a configured channel, else a
        new email or WhatsApp conversation from what the store told us."""
        cols = (CV.id, CV.channel, CV.address, CV.status, CV.language, CV.last_inbound_at)
        stmt = select(*cols).where(CV.customer_id == job.customer_id)
        row = None
        if job.conversation_id is not None:
            row = (await conn.execute(stmt.where(CV.id == job.conversation_id))).first()
        if row is None and self.channels:
            row = (await conn.execute(stmt.where(CV.channel.in_(sorted(self.channels)))
                                      .order_by(CV.last_inbound_at.desc().nulls_last(),
                                                CV.id.desc()).limit(1))).first()
        if row is not None:
            wrote = (await conn.execute(select(MS.id).where(
                MS.conversation_id == row.id, MS.direction == "in").limit(1))).first()
            return Target(row.channel, row.address, row.id, row.status, row.language,
                          row.last_inbound_at, wrote is not None)
        if cu.email and "email" in self.channels:
            return Target("email", cu.email, None)
        if cu.phone and "whatsapp" in self.channels:
            return Target("whatsapp", cu.phone, None)
        return None

    async def _last_csat(self, conn: AsyncConnection, customer_id: int) -> int | None:
        """The latest rating, the desk's or a playbook's, whichever came last."""
        desk = (await conn.execute(select(ES.csat, ES.resolved_at).join(
            Conversation.__table__, CV.id == ES.conversation_id).where(
            CV.customer_id == customer_id, ES.csat.is_not(None)).order_by(ES.id.desc())
            .limit(1))).first()
        asked = await surveys.last_answer(conn, customer_id, "csat")
        if asked is not None and (desk is None or desk.resolved_at is None
                                  or asked[1] >= desk.resolved_at):
            return asked[0]
        return None if desk is None else int(desk.csat)

    async def _checkout_done(self, conn: AsyncConnection, external: Any) -> bool:
        if not external:
            return False
        return (await conn.execute(select(CH.completed_at).where(
            CH.external_id == str(external)))).scalar() is not None

    # --- the message -----------------------------------------------------------------------

    async def _queue(self, conn: AsyncConnection, job: Any, step: Step, target: Target,
                     due: Due) -> tuple[int, int]:
        conversation_id = target.conversation_id or await self._open(conn, job, target)
        lang = due.language or self.config.default_language
        variables = await self._variables(conn, job, lang, target)
        text, used = _pick(step.message, lang, self.config.default_language)
        text = string.Template(text).safe_substitute(variables)
        meta: dict[str, Any] = {"playbook": job.playbook, "step": job.step, "job": job.id,
                                "kind": step.kind}
        if target.channel == "email":
            meta.update(self._email_meta(job, step, used, variables))
        if target.channel == "whatsapp":
            meta.update(_whatsapp_meta(step, due.window_open, variables))
        ids = await queue_replies(conn, [OutgoingReply(
            conversation_id=conversation_id, channel=target.channel, text=text, language=used,
            author="playbook", meta=meta)], stored_delivery=self.stored_delivery, now=due.now)
        if step.ask is not None:
            source = "bot" if step.trigger.kind == "bot_answered" else "playbook"
            await surveys.ask(conn, customer_id=job.customer_id, conversation_id=conversation_id,
                              kind=step.ask, source=source, playbook=job.playbook, now=due.now)
        if target.channel in self.stored_delivery:
            self._stored.append((target.channel, target.address))
        return ids[0], conversation_id

    async def _open(self, conn: AsyncConnection, job: Any, target: Target) -> int:
        """A conversation on the store's email or phone for a customer we never talked to."""
        email = target.address if target.channel == "email" else None
        phone = target.address if target.channel == "whatsapp" else None
        _customer_id, identity_id = await resolve_customer(
            conn, channel=target.channel, address=target.address, display_name=None,
            email=email, phone=phone)
        now = self.clock()
        return int((await conn.execute(Conversation.__table__.insert().values(
            customer_id=job.customer_id, identity_id=identity_id, channel=target.channel,
            address=target.address, status="resolved", meta={}, created_at=now,
            updated_at=now, resolved_at=now).returning(CV.id))).scalar_one())

    async def _variables(self, conn: AsyncConnection, job: Any, lang: str,
                         target: Target) -> dict[str, str]:
        data: Mapping[str, Any] = job.data or {}
        name = (await conn.execute(select(CU.display_name).where(CU.id == job.customer_id))
                ).scalar()
        if not name and target.channel == "webchat":
            # the name a visitor typed into the chat is never the customer's name on record
            # (anyone can type any name), but greeting that visitor with it tells nobody else
            name = (await conn.execute(select(WV.name).where(WV.visitor == target.address))
                    ).scalar()
        first = str(name).split()[0] if name else text_for("name_fallback", lang,
                                                            self.config.default_language)
        values = {"name": first, "store_name": self.config.store_name,
                  "checkout_url": str(data.get("checkout_url") or "")}
        stmt = select(OR.number, OR.external_id, OR.status, OR.placed_at, OR.total,
                      OR.currency, OR.tracking_number, OR.tracking_url, OR.carrier,
                      OR.shipment_status, OR.expected_delivery_at, OR.delivered_at).where(
            OR.customer_id == job.customer_id)
        if data.get("order_id"):
            stmt = stmt.where(OR.external_id == str(data["order_id"]))
        row = (await conn.execute(stmt.order_by(OR.placed_at.desc()).limit(1))).first()
        if row is not None:
            values.update(variables_for(_facts(row._mapping), lang))
        extra = data.get("variables") or {}
        values.update({str(k): str(v) for k, v in extra.items()
                       if isinstance(v, (str, int, float))})
        return values

    def _email_meta(self, job: Any, step: Step, lang: str,
                    variables: Mapping[str, str]) -> dict[str, Any]:
        assert self._secret is not None  # read before the transaction (run_once)
        token = consent.make_token(self._secret, job.customer_id, "email")
        subject = _pick(step.subject, lang, self.config.default_language)[0] if step.subject \
            else self.config.store_name
        sender = (self.config.email_from or "").rsplit("<", 1)[-1].rstrip(">").strip()
        return {"subject": string.Template(subject).safe_substitute(variables),
                "list_unsubscribe": f"{self.config.public_url.rstrip('/')}/unsubscribe/{token}",
                "list_unsubscribe_mailto": f"mailto:{sender}?subject=unsubscribe"
                if sender else None}


def _pick(texts: Mapping[str, str], lang: str, default: str) -> tuple[str, str]:
    for candidate in (lang, default, "en"):
        if candidate in texts:
            return texts[candidate], candidate
    first = next(iter(texts))
    return texts[first], first


def _whatsapp_meta(step: Step, window_open: bool, variables: Mapping[str, str]
                   ) -> dict[str, Any]:
    """Inside the window the text; outside it the step's approved template (the rules made
    sure there is one)."""
    if window_open or step.whatsapp_template is None:
        return {"whatsapp_mode": "text"}
    t = step.whatsapp_template
    filled = {k: string.Template(v).safe_substitute(variables) for k, v in t.variables.items()}
    return {"whatsapp_mode": "template", "content_sid": t.content_sid,
            "content_variables": json.dumps(filled, ensure_ascii=False)}

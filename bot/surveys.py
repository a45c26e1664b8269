"""The satisfaction (CSAT, 1-5) and recommend (NPS, 0-10) questions playbook steps ask.

A step with `ask: csat` or `ask: nps` records the question when its message is queued. The
customer's next message in that conversation, if it is a lone number on the question's scale
("4", "9/10", "๙"), is the answer: it is kept in `survey_answer` (the store figures read it),
thanked for in the conversation's language, and may start the playbooks whose trigger is a
score in that range. Anything else the customer writes is an ordinary message, and the
question is no longer open. The desk's own question after a person resolved a conversation
is `escalation.csat` (bot/desk_actions.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.models import Conversation, SurveyAnswer, SurveyQuestion

SQ, SA, CV = SurveyQuestion.__table__.c, SurveyAnswer.__table__.c, Conversation.__table__.c

SCALES = {"csat": (1, 5), "nps": (0, 10)}
#: one question of a kind per customer this often: a rating after every answer is spam
COOLDOWN = {"csat": timedelta(days=7), "nps": timedelta(days=90)}
#: an answer after this long is an ordinary message
ANSWER_WITHIN = timedelta(days=3)
# "4", "4/5", "9 / 10", "10!", and any script's digits (Thai ๙)
_LONE_NUMBER = re.compile(r"^\s*(\d{1,2})\s*(?:/\s*(?:5|10))?\s*[.!]?\s*$")


@dataclass(frozen=True, slots=True)
class AskedSurvey:
    """A lone number answering the satisfaction (1-5) or recommend (0-10) question a playbook
    step asked in this conversation."""

    conversation_id: int
    question_id: int
    kind: str  # csat, nps
    language: str | None
    score: int


def lone_number(text: str) -> int | None:
    found = _LONE_NUMBER.match(text)
    return int(found.group(1)) if found else None


async def ask(conn: AsyncConnection, *, customer_id: int, conversation_id: int, kind: str,
              source: str, playbook: str, now: datetime) -> None:
    await conn.execute(insert(SurveyQuestion.__table__).values(
        customer_id=customer_id, conversation_id=conversation_id, kind=kind, source=source,
        playbook=playbook, asked_at=now))


async def asked_within(conn: AsyncConnection, customer_id: int, kind: str,
                       now: datetime) -> bool:
    """The customer was asked this kind of question lately (COOLDOWN)."""
    found = (await conn.execute(select(SQ.id).where(
        SQ.customer_id == customer_id, SQ.kind == kind,
        SQ.asked_at > now - COOLDOWN[kind]).limit(1))).first()
    return found is not None


async def open_question(conn: AsyncConnection, *, customer_id: int, channel: str, text: str,
                        now: datetime) -> AskedSurvey | None:
    """The question `text` answers: the customer's latest unanswered one, asked lately on
    this channel, with nothing written to us there since, and the number on its scale."""
    score = lone_number(text)
    if score is None:
        return None
    row = (await conn.execute(
        select(SQ.id, SQ.kind, SQ.conversation_id, SQ.asked_at, CV.language)
        .join(Conversation.__table__, CV.id == SQ.conversation_id)
        .where(SQ.customer_id == customer_id, SQ.answered_at.is_(None), CV.channel == channel,
               SQ.asked_at > now - ANSWER_WITHIN)
        .order_by(SQ.asked_at.desc(), SQ.id.desc()).limit(1))).first()
    if row is None:
        return None
    low, high = SCALES[row.kind]
    if not low <= score <= high:
        return None
    wrote = (await conn.execute(select(func.max(CV.last_inbound_at)).where(
        CV.customer_id == customer_id, CV.channel == channel))).scalar()
    if wrote is not None and wrote >= row.asked_at:
        return None  # the customer wrote something else after the question
    return AskedSurvey(int(row.conversation_id), int(row.id), row.kind, row.language, score)


async def record(conn: AsyncConnection, survey: AskedSurvey, *, customer_id: int,
                 now: datetime) -> None:
    """The answer, once: a question already answered (a redelivered message) adds nothing."""
    answered = await conn.execute(update(SurveyQuestion.__table__).where(
        SQ.id == survey.question_id, SQ.answered_at.is_(None)).values(answered_at=now))
    if answered.rowcount != 1:
        return
    source = (await conn.execute(select(SQ.source).where(SQ.id == survey.question_id))
              ).scalar() or "bot"
    await conn.execute(insert(SurveyAnswer.__table__).values(
        customer_id=customer_id, conversation_id=survey.conversation_id, kind=survey.kind,
        score=survey.score, source=source, answered_at=now))


async def last_answer(conn: AsyncConnection, customer_id: int, kind: str
                      ) -> tuple[int, datetime] | None:
    """The customer's latest answer of that kind: (score, when)."""
    found = (await conn.execute(select(SA.score, SA.answered_at).where(
        SA.customer_id == customer_id, SA.kind == kind).order_by(SA.id.desc()).limit(1))
    ).first()
    return None if found is None else (int(found.score), found.answered_at)


async def answers_since(conn: AsyncConnection, after_id: int, limit: int
                        ) -> list[tuple[int, int, int | None, str, int]]:
    """(id, customer, conversation, kind, score) of answers after `after_id`, for the
    playbooks' csat / nps triggers."""
    rows = (await conn.execute(select(SA.id, SA.customer_id, SA.conversation_id, SA.kind,
                                      SA.score).where(SA.id > after_id).order_by(SA.id)
                               .limit(limit))).all()
    return [(int(r.id), int(r.customer_id), r.conversation_id, r.kind, int(r.score))
            for r in rows]

"""One durable-job primitive for every queue the service keeps in its database.

The inbox (`inbox`), the outbox (`outbox`), the desk's Slack posts (`desk_job`) and the
playbook steps (`playbook_job`) are tables of jobs with the same life: *due* (pending, its
time has come), *done*, *retried* later with exponential backoff, *failed* for good after
too many attempts or a permanent error (the dead letters), and *requeued* by an admin once
the cause is fixed. `JobTable` names a table's columns and states, and is the one place that
says how each of those steps is written, so a fix to the retry or give-up policy is made once.
Each queue keeps what is its own: how it claims rows, in which order, what a job does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any

from sqlalchemy import ColumnElement, Table, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.models import DeskJob, InboxItem, Message, OutboxItem, PlaybookJob

#: an error text kept on a job row is cut to this
ERROR_CHARS = 2000


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff: 1, 2, 4 ... seconds, capped."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


def due_rows(rows: Iterable[Any], now: datetime, blocked: set[Any],
             key: Callable[[Any], Any] = attrgetter("conversation_key"),
             due: str = "next_attempt_at") -> Iterator[Any]:
    """Rows that may be handled now, in id order. Once a row of a key (a conversation, an
    escalation) waits for a retry, or the caller adds the key to `blocked` while iterating,
    that key's later rows wait too."""
    for row in rows:
        if key(row) in blocked:
            continue
        at = getattr(row, due)
        if at is not None and at > now:
            blocked.add(key(row))
            continue
        yield row


@dataclass(frozen=True, slots=True)
class Retry:
    """What a failed attempt leads to: the values to write, and whether it gave up."""

    values: dict[str, Any]
    gave_up: bool
    wait: float


@dataclass(frozen=True, slots=True)
class JobTable:
    """A queue table: its columns and the names of its states."""

    table: Table
    pending: str = "pending"
    done: str = "done"
    failed: str = "failed"
    status: str = "status"
    attempts: str = "attempts"
    due: str = "next_attempt_at"
    error: str = "last_error"
    done_at: str | None = None  # the column stamped when a job is done, if any

    def col(self, name: str) -> Any:
        return self.table.c[name]

    def is_due(self, now: datetime) -> ColumnElement[bool]:
        due = self.col(self.due)
        found: ColumnElement[bool] = (self.col(self.status) == self.pending) & or_(
            due.is_(None), due <= now)
        return found

    def finished(self, attempts: int, now: datetime) -> dict[str, Any]:
        values: dict[str, Any] = {self.status: self.done, self.attempts: attempts}
        if self.done_at is not None:
            values[self.done_at] = now
        return values

    def retry(self, attempts: int, error: str, now: datetime, *, max_attempts: int,
              delay: float | None = None, permanent: bool = False) -> Retry:
        """After attempt number `attempts` failed: again after `delay` (default: backoff),
        or failed for good when it was permanent or the attempts are used up."""
        gave_up = permanent or attempts >= max_attempts
        wait = delay if delay is not None else backoff(attempts)
        values: dict[str, Any] = {self.attempts: attempts, self.error: error[:ERROR_CHARS]}
        if gave_up:
            values[self.status] = self.failed
        else:
            values[self.status] = self.pending
            values[self.due] = now + timedelta(seconds=wait)
        return Retry(values, gave_up, wait)

    async def requeue(self, conn: AsyncConnection, now: datetime,
                      ids: Sequence[int] | None = None) -> int:
        """Failed jobs (all, or these) get another full round of attempts."""
        stmt = update(self.table).where(self.col(self.status) == self.failed)
        if ids is not None:
            stmt = stmt.where(self.table.c.id.in_(list(ids)))
        result = await conn.execute(stmt.values(
            {self.status: self.pending, self.attempts: 0, self.due: now}))
        return int(result.rowcount or 0)

    async def counts(self, conn: AsyncConnection) -> dict[str, int]:
        status = self.col(self.status)
        rows = (await conn.execute(select(status, func.count()).group_by(status))).all()
        found = {str(r[0]): int(r[1]) for r in rows}
        return {s: found.get(s, 0) for s in (self.pending, self.done, self.failed)}


INBOX = JobTable(InboxItem.__table__, failed="dead")
OUTBOX = JobTable(OutboxItem.__table__, done="sent", done_at="sent_at")
DESK_JOBS = JobTable(DeskJob.__table__, done_at="done_at")
PLAYBOOK_STEPS = JobTable(PlaybookJob.__table__, pending="scheduled", done="sent",
                          failed="skipped", status="state", due="due_at", error="reason",
                          done_at="done_at")
#: every queue of the service, by the name the CLI and the admin API use
QUEUES: dict[str, JobTable] = {"inbox": INBOX, "outbox": OUTBOX, "desk": DESK_JOBS,
                               "playbooks": PLAYBOOK_STEPS}
#: the queues an admin may requeue failed jobs of (the inbox's dead letters have their own
#: command; a skipped playbook step was skipped on purpose: consent, caps, quiet hours)
REQUEUABLE = ("outbox", "desk")


async def requeue_failed(conn: AsyncConnection, queue: str, now: datetime) -> int:
    """Every failed job of `queue` another full round; an outbox reply is pending again."""
    if queue not in REQUEUABLE:
        raise ValueError(f"queue must be one of {', '.join(REQUEUABLE)}")
    if queue == "outbox":
        ob = OutboxItem.__table__.c
        failed = select(ob.message_id).where(ob.status == OUTBOX.failed).scalar_subquery()
        await conn.execute(update(Message.__table__).where(Message.__table__.c.id.in_(failed))
                           .values(status="pending", error=None))
    return await QUEUES[queue].requeue(conn, now)

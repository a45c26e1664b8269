"""`/inbox`: the desk's slash command, in Slack's words but on the shared staff actions.

`/inbox` (or `list`) lists waiting conversations and today's counts; `take`, `release`,
`resolve`, `back`, `reopen`, `snooze` and `assign` act on one escalation by number through
`DeskActions`, the same actions as the buttons and the dashboard.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import func, select

from bot.db.engine import Database
from bot.db.models import Conversation, Customer, Escalation
from bot.desk import cards
from bot.desk.actions import DeskActions
from bot.desk.terms import CU, CV, ES, OPEN, RESOLVED, TAKEN, DeskRefused

#: a user as Slack writes a mention, `<@U123>` or `<@U123|name>`
SLACK_USER = re.compile(r"^<@([UW][A-Z0-9]+)(?:\|[^>]*)?>$")
HELP = ("`/inbox` lists waiting conversations and today's counts. "
        "`/inbox take 12`, `/inbox release 12`, `/inbox resolve 12`, `/inbox back 12` (back to "
        "the bot), `/inbox reopen 12`, `/inbox snooze 12 2h`, `/inbox assign 12 @user`.")


async def inbox_command(desk: DeskActions, text: str, user: str) -> str:
    """`/inbox [list | take N | release N | resolve N | back N | reopen N | snooze N 2h |
    assign N @user | help]`."""
    parts = text.split()
    if not parts or parts[0] in ("list", "ls"):
        return await inbox_summary(desk.db, desk.clock())
    verb, args = parts[0].lower(), parts[1:]
    try:
        esc_id = int(args[0].lstrip("#")) if args else None
    except ValueError:
        esc_id = None
    verbs = ("take", "release", "resolve", "back", "reopen", "snooze", "assign")
    if esc_id is None or verb not in verbs:
        return HELP
    try:
        async with desk.db.write() as conn:
            if verb == "assign":
                m = SLACK_USER.match(args[1]) if len(args) == 2 else None
                if m is None:
                    return "Usage: `/inbox assign 12 @user` (pick the user from the list)."
                reply = await desk.assign(conn, esc_id, m.group(1), user)
            else:
                reply = await desk.do(conn, verb, esc_id, user, " ".join(args[1:]))
    except DeskRefused as exc:
        return str(exc)
    desk.changed()
    return reply


async def inbox_summary(db: Database, now: datetime) -> str:
    """Who is waiting or in progress, and today's counts."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    async with db.read() as conn:
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
        state = f"with {cards.mention(r.taken_by)}" if r.status == TAKEN else \
            f"waiting {cards.minutes((now - r.created_at).total_seconds())}"
        lines.append(f"• *#{r.id}* {cards.escape(r.display_name or 'customer')} "
                     f"({cards.CHANNEL_NAMES.get(r.channel, r.channel)}, {r.language or '?'})"
                     f" · {cards.REASONS.get(r.reason, r.reason)} · {state}")
    lines.append(f"*Today:* {counts['new']} escalated · {counts['answered']} answered · "
                 f"{counts['resolved']} resolved"
                 + (f" · satisfaction {float(csat):.1f}/5" if csat is not None else ""))
    return "\n".join(lines)

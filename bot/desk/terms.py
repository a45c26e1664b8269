"""The desk's words: escalation statuses, the satisfaction survey, refusals, notes, snoozes.

Shared by the pipeline's hooks (bot/desk/hooks.py), the staff actions (bot/desk/actions.py),
the Slack listeners (bot/desk/slack.py) and the dashboard's desk (bot/admin/desk_view.py).
"""

from __future__ import annotations

import re
from datetime import timedelta

from bot.db.models import (
    Conversation,
    Customer,
    Escalation,
    Message,
    OutboxItem,
)
from bot.desk.jobs import FaqLookup, staff_may_send
from core.errors import InputError
from faq.models import FaqEntry

ES, CV, CU = Escalation.__table__.c, Conversation.__table__.c, Customer.__table__.c
MS, OB = Message.__table__.c, OutboxItem.__table__.c
OPEN, TAKEN, RESOLVED, RETURNED = "open", "taken", "resolved", "returned"
LIVE = (OPEN, TAKEN)
NOTE_MARKERS = ("note:", "!note", "/note")
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

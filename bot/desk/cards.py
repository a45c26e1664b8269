"""Block Kit for the staff desk: the escalation card, thread mirrors, failure notices.

Pure functions over plain data, so the card can be rendered from the database at delivery time
(a card update always shows the latest state, however many changes were queued). Everything a
customer typed is escaped, so nobody can inject `<!channel>` or fake links into the desk.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

REASONS = {
    "no_match": "no FAQ answer", "ambiguous": "several FAQ answers fit",
    "asked_for_human": "asked for a person", "repeated_question": "asked the same again",
    "entry_escalates": "topic always handled by staff", "attachment": "sent a file",
    "empty_message": "empty message", "staff_opened": "opened by staff",
}
CHANNEL_NAMES = {"telegram": "Telegram", "whatsapp": "WhatsApp", "email": "Email",
                 "slack": "Slack", "webchat": "Web chat"}
ACTIONS = {"take": "desk_take", "suggest": "desk_suggest", "resolve": "desk_resolve",
           "back": "desk_back", "retry": "desk_retry", "answer": "desk_answer",
           "release": "desk_release", "reopen": "desk_reopen", "snooze": "desk_snooze",
           "assign": "desk_assign"}
#: buttons whose value is just the escalation id
BUTTON_VERBS = frozenset({"take", "suggest", "resolve", "back", "release", "reopen"})
SNOOZES = (("30 minutes", "30m"), ("1 hour", "1h"), ("4 hours", "4h"), ("1 day", "1d"))
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,}$")
MAX_LINE = 300


@dataclass(frozen=True, slots=True)
class CardMessage:
    author: str  # customer, bot, staff:<id>
    text: str
    attachments: int = 0


@dataclass(frozen=True, slots=True)
class CardData:
    escalation_id: int
    status: str  # open, taken, resolved, returned
    reason: str
    customer: str
    channel: str
    language: str | None
    stage: str | None
    team: str | None
    created_at: datetime
    now: datetime
    taken_by: str | None = None
    taken_at: datetime | None = None
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    reposted_at: datetime | None = None
    csat: int | None = None
    out_of_hours: str | None = None
    messages: Sequence[CardMessage] = ()
    candidates: Sequence[tuple[str, str, float]] = field(default_factory=tuple)
    #: (entry id, label) staff may send from the picker, the candidates first
    answer_options: Sequence[tuple[str, str]] = field(default_factory=tuple)
    priority: bool = False
    orders_count: int = 0
    total_spent: float = 0.0
    currency: str = ""
    #: the customer's latest order: (number, status, placed_at)
    last_order: tuple[str, str, datetime | None] | None = None
    email: str | None = None
    phone: str | None = None
    snoozed_until: datetime | None = None
    #: WhatsApp: the customer's last message (the 24-hour window) and staff text held until
    #: they write again
    last_inbound_at: datetime | None = None
    held: int = 0


def mention(user: str | None) -> str:
    """A Slack user as a mention; someone working from the dashboard by name."""
    if not user:
        return "someone"
    if _SLACK_ID.match(user):
        return f"<@{user}>"
    return escape(user.removeprefix("web:"))


def window_line(d: CardData) -> str | None:
    """WhatsApp's 24-hour window: open (how long still), or closed and what is held."""
    if d.channel != "whatsapp":
        return None
    left = None if d.last_inbound_at is None else \
        d.last_inbound_at + timedelta(hours=24) - d.now
    if d.held or (left is not None and left.total_seconds() <= 0):
        waiting = "⏸️ Waiting for the customer to reopen the WhatsApp window: "
        if d.held:
            return waiting + (f"{d.held} message{'s' if d.held != 1 else ''} held, delivered "
                              "when they write")
        return waiting + "a reply now is held (a reopen template goes out if one is set) and " \
                         "delivered when they write"
    if left is None:
        return None
    return f"🟢 WhatsApp window open for {minutes(left.total_seconds())}"


def contact_line(d: CardData) -> str | None:
    parts = [f"✉️ {escape(d.email)}" if d.email else "", f"📞 {escape(d.phone)}" if d.phone else ""]
    return " · ".join(p for p in parts if p) or None


def customer_line(d: CardData) -> str:
    """Orders, total spent and the latest order, so staff see who they are talking to."""
    if not d.orders_count and d.last_order is None:
        return "🛒 No orders on file"
    line = f"🛒 {d.orders_count} order{'s' if d.orders_count != 1 else ''} · " \
           f"{d.total_spent:.2f} {d.currency}".rstrip()
    if d.last_order is not None:
        number, status, placed = d.last_order
        when = f" on {placed:%Y-%m-%d}" if placed is not None else ""
        line += f" · last #{escape(number.lstrip('#'))}{when}: {escape(status)}"
    return line


def escape(text: str) -> str:
    """Slack mrkdwn escaping: only &, < and > are special."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def short(text: str, limit: int = MAX_LINE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def clip(text: str, limit: int) -> str:
    """Cut to `limit` characters, keeping the line breaks (Slack's section limit is 3000)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def minutes(delta_seconds: float) -> str:
    m = max(0, int(delta_seconds // 60))
    return f"{m} min" if m < 120 else f"{m // 60} h {m % 60} min"


def who(author: str) -> str:
    if author.startswith("staff:"):
        return mention(author.removeprefix("staff:"))
    return {"customer": "Customer", "bot": "Bot"}.get(author, escape(author))


def status_line(d: CardData) -> str:
    waited = minutes(((d.first_response_at or d.taken_at or d.now) - d.created_at)
                     .total_seconds())
    if d.status == "open":
        line = f"⏳ Waiting for {minutes((d.now - d.created_at).total_seconds())}"
        if d.reposted_at:
            line += " · re-posted to on-call"
    elif d.status == "taken":
        line = f"👤 Taken by {mention(d.taken_by)} · first response after {waited}" \
            if d.first_response_at else f"👤 Taken by {mention(d.taken_by)} after {waited}"
    elif d.status == "resolved":
        took = minutes(((d.resolved_at or d.now) - d.created_at).total_seconds())
        line = f"✅ Resolved{f' by {mention(d.taken_by)}' if d.taken_by else ''} after {took}"
    else:
        line = "🤖 Back to the bot" + (f" (was with {mention(d.taken_by)})" if d.taken_by
                                      else "")
    if d.snoozed_until is not None and d.status in ("open", "taken"):
        line += f" · 💤 snoozed until {d.snoozed_until:%Y-%m-%d %H:%M} UTC"
    if d.csat is not None:
        line += f" · satisfaction {d.csat}/5 {'⭐' * d.csat}"
    return line


def card(d: CardData) -> tuple[str, list[dict[str, Any]]]:
    """(fallback text, blocks) of the escalation card."""
    via = CHANNEL_NAMES.get(d.channel, d.channel)
    title = f"Escalation #{d.escalation_id}: {short(d.customer, 80)} via {via}"
    if d.priority:
        title = "🔥 Priority · " + title
    fields = [f"*Language*\n{d.language or '?'}", f"*Stage*\n{d.stage or '-'}",
              f"*Why*\n{REASONS.get(d.reason, d.reason)}", f"*Team*\n{d.team or '-'}"]
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*🆘 {escape(title)}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": status_line(d)}]},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": customer_line(d)}]},
    ]
    contact = contact_line(d)
    if contact:
        blocks.insert(2, {"type": "context", "elements": [{"type": "mrkdwn", "text": contact}]})
    window = window_line(d)
    if window:
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": window}]})
    if d.out_of_hours:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"🌙 Outside team hours; customer told: "
                                       f"_{escape(short(d.out_of_hours))}_"}]})
    if d.messages:
        lines = [f"> *{who(m.author)}*: {escape(short(m.text))}"
                 + (f" 📎×{m.attachments}" if m.attachments else "") for m in d.messages]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": clip(
            "*Last messages*\n" + "\n".join(lines), 2900)}})
    if d.candidates:
        lines = [f"• `{escape(fid)}` {escape(short(q, 120))} ({score:.2f})"
                 for fid, q, score in d.candidates[:3]]
        blocks.append({"type": "section", "text": {
            "type": "mrkdwn", "text": "*FAQ candidates*\n" + "\n".join(lines)}})
    blocks += _action_blocks(d)
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
        "Reply in this thread to answer the customer; start with `note:` to keep it internal "
        "(the customer never sees notes), or `answer: <entry id>` to send an FAQ answer in the "
        "customer's language. “Save as FAQ” on a reply drafts an FAQ entry.")}]})
    return clip(f"{title} ({status_line(d)})", 3000), _within_limits(blocks)


def _action_blocks(d: CardData) -> list[dict[str, Any]]:
    """Buttons that follow the state: Take or Release, Resolve, Back to bot, the FAQ picker,
    snooze and assign; Reopen once it is closed."""
    value = str(d.escalation_id)
    if d.status not in ("open", "taken"):
        return [{"type": "actions", "block_id": f"desk-{d.escalation_id}", "elements": [
            _button("Reopen", ACTIONS["reopen"], value)]}]
    buttons = [_button("Take", ACTIONS["take"], value, "primary") if d.status == "open"
               else _button("Release", ACTIONS["release"], value)]
    if d.candidates:
        buttons.append(_button("Send suggested answer", ACTIONS["suggest"], value))
    buttons += [_button("Resolve", ACTIONS["resolve"], value),
                _button("Back to bot", ACTIONS["back"], value)]
    if d.answer_options:
        buttons.append(_menu(ACTIONS["answer"], "Send FAQ answer…", [
            (label, f"{d.escalation_id}:{entry_id}") for entry_id, label in d.answer_options]))
    manage: list[dict[str, Any]] = [
        _menu(ACTIONS["snooze"], "Snooze…",
              [(label, f"{d.escalation_id}:{length}") for label, length in SNOOZES]),
        {"type": "users_select", "action_id": ACTIONS["assign"],
         "placeholder": {"type": "plain_text", "text": "Assign to…"}}]
    return [{"type": "actions", "block_id": f"desk-{d.escalation_id}", "elements": buttons},
            {"type": "actions", "block_id": f"desk-assign-{d.escalation_id}",
             "elements": manage}]


def _menu(action_id: str, placeholder: str, options: Sequence[tuple[str, str]]
          ) -> dict[str, Any]:
    return {"type": "static_select", "action_id": action_id,
            "placeholder": {"type": "plain_text", "text": placeholder},
            "options": [{"text": {"type": "plain_text", "text": clip(label, 75)},
                         "value": value[:150]} for label, value in options[:100]]}


def _within_limits(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Slack refuses the whole message when one text is too long: section and context texts
    at most 3,000 characters, section fields 2,000, button labels 75."""
    for block in blocks:
        text = block.get("text")
        if isinstance(text, dict):
            text["text"] = clip(text["text"], 3000)
        for f in block.get("fields", ()):
            f["text"] = clip(f["text"], 2000)
        for element in block.get("elements", ()):
            if element.get("type") == "mrkdwn":
                element["text"] = clip(element["text"], 3000)
            elif element.get("type") == "button":
                element["text"]["text"] = clip(element["text"]["text"], 75)
    return blocks


def _button(label: str, action_id: str, value: str, style: str | None = None) -> dict[str, Any]:
    b: dict[str, Any] = {"type": "button", "text": {"type": "plain_text", "text": label},
                         "action_id": action_id, "value": value}
    if style:
        b["style"] = style
    return b


def mirror(customer: str, text: str, attachments: Sequence[dict[str, Any]]) -> str:
    """A customer message copied into the staff thread."""
    lines = [f"💬 *{escape(short(customer, 80))}*: {escape(text)}" if text
             else f"💬 *{escape(short(customer, 80))}*:"]
    for a in attachments:
        label = escape(str(a.get("name") or a.get("kind") or "file")).replace("|", "¦")
        ref = str(a.get("ref") or "")
        if ref.startswith(("https://", "http://")) and not set(ref) & set("<>| "):
            lines.append(f"📎 <{ref}|{label}>")  # a link staff can open (web chat files)
        else:
            lines.append(f"📎 {label}" + (f" ({escape(ref)})" if ref else ""))
    return "\n".join(lines)


def failure(outbox_id: int, escalation_id: int, error: str,
            preview: str) -> tuple[str, list[dict[str, Any]]]:
    """Notice of a reply that could not be delivered, with a Retry button."""
    text = (f"⚠️ Delivery to the customer failed: {escape(short(error, 500))}\n"
            f"> {escape(short(preview, 200))}")
    return text, [
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "actions", "block_id": f"retry-{outbox_id}", "elements": [
            _button("Retry", ACTIONS["retry"], f"{outbox_id}:{escalation_id}", "danger")]},
    ]

"""Block Kit for the staff desk: the escalation card, thread mirrors, failure notices.

Pure functions over plain data, so the card can be rendered from the database at delivery time
(a card update always shows the latest state, however many changes were queued). Everything a
customer typed is escaped, so nobody can inject `<!channel>` or fake links into the desk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

REASONS = {
    "no_match": "no FAQ answer", "ambiguous": "several FAQ answers fit",
    "asked_for_human": "asked for a person", "repeated_question": "asked the same again",
    "entry_escalates": "topic always handled by staff", "attachment": "sent a file",
    "empty_message": "empty message",
}
CHANNEL_NAMES = {"telegram": "Telegram", "whatsapp": "WhatsApp", "email": "Email",
                 "slack": "Slack", "webchat": "Web chat"}
ACTIONS = {"take": "desk_take", "suggest": "desk_suggest", "resolve": "desk_resolve",
           "back": "desk_back", "retry": "desk_retry", "answer": "desk_answer"}
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
        line += f" · last #{escape(number)}{when}: {escape(status)}"
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
        return f"<@{author.removeprefix('staff:')}>"
    return {"customer": "Customer", "bot": "Bot"}.get(author, escape(author))


def status_line(d: CardData) -> str:
    waited = minutes(((d.first_response_at or d.taken_at or d.now) - d.created_at)
                     .total_seconds())
    if d.status == "open":
        line = f"⏳ Waiting for {minutes((d.now - d.created_at).total_seconds())}"
        if d.reposted_at:
            line += " · re-posted to on-call"
    elif d.status == "taken":
        line = f"👤 Taken by <@{d.taken_by}> · first response after {waited}" \
            if d.first_response_at else f"👤 Taken by <@{d.taken_by}> after {waited}"
    elif d.status == "resolved":
        took = minutes(((d.resolved_at or d.now) - d.created_at).total_seconds())
        line = f"✅ Resolved{f' by <@{d.taken_by}>' if d.taken_by else ''} after {took}"
    else:
        line = "🤖 Back to the bot" + (f" (was with <@{d.taken_by}>)" if d.taken_by else "")
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
    if d.status in ("open", "taken"):
        value = str(d.escalation_id)
        buttons = [_button("Take", ACTIONS["take"], value, "primary")] if d.status == "open" \
            else []
        if d.candidates:
            buttons.append(_button("Send suggested answer", ACTIONS["suggest"], value))
        buttons += [_button("Resolve", ACTIONS["resolve"], value),
                    _button("Back to bot", ACTIONS["back"], value)]
        if d.answer_options:
            buttons.append({
                "type": "static_select", "action_id": ACTIONS["answer"],
                "placeholder": {"type": "plain_text", "text": "Send FAQ answer…"},
                "options": [{"text": {"type": "plain_text", "text": clip(label, 75)},
                             "value": f"{d.escalation_id}:{entry_id}"[:150]}
                            for entry_id, label in d.answer_options[:100]]})
        blocks.append({"type": "actions", "block_id": f"desk-{d.escalation_id}",
                       "elements": buttons})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": (
        "Reply in this thread to answer the customer; start with `note:` to keep it internal, "
        "or `answer: <entry id>` to send an FAQ answer in the customer's language.")}]})
    return clip(f"{title} ({status_line(d)})", 3000), _within_limits(blocks)


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
        label = escape(str(a.get("name") or a.get("kind") or "file"))
        ref = a.get("ref")
        lines.append(f"📎 {label}" + (f" ({escape(str(ref))})" if ref else ""))
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

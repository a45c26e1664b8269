"""The mail of a playbook step: sent by itself, so it carries its own subject and the
unsubscribe headers, and threads into no support conversation."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from channels.base import OutboundMessage
from channels.email_parse import OWN_ID_MARK


def playbook_mail(message: OutboundMessage, sender: str, domain: str) -> EmailMessage:
    """A playbook's mail: its own subject, a plain-text body, and the unsubscribe headers
    mail providers show as a button (List-Unsubscribe with a mailto and an https link,
    List-Unsubscribe-Post for the one-click POST of RFC 8058)."""
    meta = message.meta
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = message.address
    mail["Subject"] = str(meta.get("subject") or "")
    mail["Date"] = format_datetime(datetime.now(UTC))
    mail["Message-ID"] = make_msgid(idstring=f"{OWN_ID_MARK}.{message.message_id}",
                                    domain=domain)
    mail["Auto-Submitted"] = "auto-generated"
    url = meta.get("list_unsubscribe")
    body = message.text
    if isinstance(url, str) and url:
        targets = [f"<{m}>" for m in (meta.get("list_unsubscribe_mailto"),) if m] + [f"<{url}>"]
        mail["List-Unsubscribe"] = ", ".join(targets)
        mail["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        body += f"\n\n--\nUnsubscribe: {url}"
    mail.set_content(body)
    return mail

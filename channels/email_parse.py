"""Pure functions for the email channel: decode a mail, keep only what the customer wrote,
tell automatic mail (auto-replies, bounces, lists, our own) from a person, thread replies.

No I/O here, so every rule is tested on fixture files without a mail server.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

import html2text
from email_reply_parser import EmailReplyParser

from channels.base import Attachment

#: Our Message-IDs end like this (make_msgid idstring), so an echo of our own mail is known.
OWN_ID_MARK = "storedesk"
_MSGID = re.compile(r"<[^<>\s]+>")
_REPLY_PREFIX = re.compile(r"^\s*((re|r|aw|sv|antw|rif)\s*(\[\d+\])?\s*:\s*)+", re.IGNORECASE)

# --- quoted history and signatures ---------------------------------------------------------

# A line that starts the quoted original: "On <date>, <name> wrote:" in several languages
# (the header may wrap over up to three lines), Outlook separators, "Original Message".
_WROTE = (r"wrote|writes|ha scritto|scrisse|schrieb|a écrit|a ecrit|escribió|escribio"
          r"|escreveu|schreef|skrev|kirjoitti|napisał|написал\(?а?\)?|เขียนว่า")
_QUOTE_HEADER = re.compile(
    rf"^[ \t]*(?:On|Il|Am|Le|El|Em|Op|Den|Dne|W dniu|เมื่อ)\b[^\n]*(?:\n[^\n]*){{0,3}}?"
    rf"(?:{_WROTE})[^\n]{{0,80}}:[ \t]*$"
    rf"|^[^\n]{{0,200}}\b(?:{_WROTE})\s*:[ \t]*$"
    # "26.06.2014, 14:41, "Alex" <a@b.c>:" (Yandex, Android), "... от Alex <a@b.c>:" (Mail.ru)
    rf"|^[ \t]*\d{{1,4}}[./-]\d{{1,2}}[./-]\d{{2,4}}\b[^\n]*(?:\n[^\n]*){{0,2}}?"
    rf"(?:{_WROTE}|>)[ \t]*:[ \t]*$"
    rf"|^[^\n]{{0,200}}<[^\s<>@]+@[^\s<>]+>[ \t]*:[ \t]*$",
    re.MULTILINE | re.IGNORECASE)
_ORIGINAL = re.compile(
    r"^[ \t]*-{2,}[ \t]*(?:Original Message|Messaggio originale|Ursprüngliche Nachricht"
    r"|Message d'origine|Mensaje original|Mensagem original|Reply above this line)[ \t]*-{2,}"
    r"|^[ \t]*_{20,}[ \t]*$|^[ \t]*-{20,}[ \t]*$|^[ \t]*\* \* \*[ \t]*$",  # * * * = <hr>
    re.MULTILINE | re.IGNORECASE)
# Outlook's header block: "From:" followed within a few lines by "Sent:"/"Date:"/"To:".
_OUTLOOK = re.compile(
    r"^[ \t]*\**(?:From|Da|De|Von|Van|Från|От|จาก)\**[ \t]*:[^\n]*\n"
    r"(?:[^\n]*\n){0,3}?[ \t]*\**(?:Sent|Date|Inviato|Data|Envoyé|Gesendet|Enviado|Verzonden"
    r"|Skickat|Отправлено|Кому|To|A|À|An|Subject|Oggetto)\**[ \t]*:",
    re.MULTILINE | re.IGNORECASE)
_SIG_DELIM = re.compile(r"^(?:-- ?|--|__|-{10,})[ \t]*$", re.MULTILINE)
_MOBILE = re.compile(
    r"^[ \t]*(?:Sent from my [\w \-]{1,40}|Sent from (?:Mail|Outlook|Yahoo Mail|Gmail)[\w \-]{0,40}"
    r"|Get Outlook for \w+|Inviato da(?:l mio)? [\w \-]{1,40}|Inviato dall'app [\w \-]{1,40}"
    r"|Envoyé de mon [\w \-]{1,40}|Von meinem [\w \-]{1,40} gesendet|ส่งจาก [^\n]{1,40})"
    r"[ \t]*\.?[ \t]*$",
    re.MULTILINE | re.IGNORECASE)


def strip_reply(text: str) -> str:
    """What the customer wrote this time: no quoted history, no signature, no "Sent from"."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    cut, drop = len(text), []
    for pattern in (_QUOTE_HEADER, _ORIGINAL, _OUTLOOK):
        for m in pattern.finditer(text):
            after = text[m.end():].lstrip(" \t\n")
            if pattern is _QUOTE_HEADER and (not after or after.startswith(">")):
                drop.append((m.start(), m.end()))  # introduces a ">" block: drop the line only
            elif text[:m.start()].strip():  # nothing above = a forward: keep it whole
                cut = min(cut, m.start())
                break
    for start, end in sorted(drop, reverse=True):
        if end <= cut:
            text = text[:start] + text[end:]
            cut -= end - start
    text = text[:cut]
    text = "\n".join(ln for ln in text.split("\n") if not ln.lstrip().startswith(">"))
    sig = [m for m in _SIG_DELIM.finditer(text) if text[:m.start()].strip()]
    if sig:
        text = text[:sig[0].start()]
    reply = _drop_sign_off(_MOBILE.sub("", text).strip())
    if not reply:
        return ""
    # email-reply-parser as a second opinion for a short sign-off our rules missed ("-Ann");
    # it takes any line starting with "--" or "-word" for a signature, so a cut that would
    # remove more than a few short lines (a list of "-- items") is ignored.
    parsed = EmailReplyParser.parse_reply(reply).strip()
    rest = reply[len(parsed):] if parsed and reply.startswith(parsed) else ""
    if rest and _lines(rest) <= 3 and all(len(ln.strip()) <= 30 for ln in rest.split("\n")):
        reply = parsed
    reply = "\n".join(ln.rstrip() for ln in reply.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", reply).strip()


_SIGN_OFF = re.compile(
    r"^(?:thanks?(?: you| a lot| in advance)?|many thanks|thx|regards|best(?: regards| wishes)?"
    r"|kind regards|cheers|sincerely|grazie(?: mille)?|saluti|cordiali saluti|distinti saluti"
    r"|un saluto|a presto|ขอบคุณ(?:ครับ|ค่ะ|คะ)?)[ \t]*[,.!]*$", re.IGNORECASE)


def _lines(text: str) -> int:
    return sum(1 for ln in text.split("\n") if ln.strip())


def _drop_sign_off(text: str) -> str:
    """Drop a closing like "Thanks,\nAnn" at the very end: it only adds noise to matching."""
    lines = text.split("\n")
    for i in range(len(lines) - 1, max(-1, len(lines) - 4), -1):
        if _SIGN_OFF.match(lines[i].strip()):
            tail = [ln for ln in lines[i + 1:] if ln.strip()]
            head = "\n".join(lines[:i]).strip()
            if head and len(tail) <= 2 and all(len(ln) <= 40 for ln in tail):
                return head
    return text


def html_to_text(html: str) -> str:
    """HTML-only mail as plain text, with the quoted original (Gmail/Outlook blocks) removed."""
    html = re.sub(r"(?is)<blockquote\b.*?</blockquote>", "", html)
    html = re.sub(r'(?is)<div[^>]+class="[^"]*(gmail_quote|gmail_extra|yahoo_quoted)[^"]*".*',
                  "", html)
    html = re.sub(r'(?is)<div[^>]+id="(appendonsend|divRplyFwdMsg)".*', "", html)
    conv = html2text.HTML2Text()
    conv.body_width = 0
    conv.ignore_links = True
    conv.ignore_images = True
    conv.ignore_emphasis = True
    return str(conv.handle(html)).strip()


# --- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """The parts of one mail the channel needs."""

    message_id: str | None
    dedup_key: str
    sender: str  # the address we answer: Reply-To if given, else From (lower case)
    from_address: str
    display_name: str | None
    subject: str
    in_reply_to: str | None
    references: tuple[str, ...]
    thread: str
    body: str  # the whole decoded text
    text: str  # only the new part
    attachments: tuple[Attachment, ...]
    date: datetime | None
    language: str | None
    automatic: str | None  # why we must not answer it, or None


def parse_mail(raw: bytes, *, own_addresses: frozenset[str] = frozenset(),
               own_domain: str | None = None) -> ParsedMail:
    """Decode headers and body (charsets, RFC 2047, quoted-printable, base64, HTML-only)."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    message_id = _first_id(_header(msg, "Message-ID"))
    in_reply_to = _first_id(_header(msg, "In-Reply-To"))
    references = tuple(_MSGID.findall(_header(msg, "References")))
    from_name, from_addr = _address(_header(msg, "From"))
    _, reply_to = _address(_header(msg, "Reply-To"))
    subject = " ".join(_header(msg, "Subject").split())
    body = body_text(msg)
    date = _date(_header(msg, "Date"))
    dedup = message_id or "sha256:" + hashlib.sha256("\n".join(
        (_header(msg, "Date"), from_addr, subject)).encode()).hexdigest()[:40]
    lang = _header(msg, "Content-Language").split(",")[0].strip().lower()[:2] or None
    return ParsedMail(
        message_id=message_id, dedup_key=dedup[:250], sender=reply_to or from_addr,
        from_address=from_addr, display_name=from_name, subject=subject,
        in_reply_to=in_reply_to, references=references,
        thread=thread_root(message_id, in_reply_to, references) or dedup[:250],
        body=body, text=strip_reply(body), attachments=attachments_of(msg), date=date,
        language=lang,
        automatic=automatic_reason(msg, from_addr, message_id, own_addresses, own_domain))


def body_text(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):  # unknown charset, broken encoding
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return ""
    return html_to_text(content) if part.get_content_subtype() == "html" else content


def attachments_of(msg: EmailMessage) -> tuple[Attachment, ...]:
    found = []
    for part in msg.iter_attachments():
        mime = part.get_content_type()
        payload = part.get_payload(decode=True)
        kind = {"image": "image", "audio": "audio", "video": "video"}.get(
            part.get_content_maintype(), "document")
        found.append(Attachment(kind=kind, name=part.get_filename(), mime_type=mime,
                                size=len(payload) if isinstance(payload, bytes) else None))
    return tuple(found[:20])


def thread_root(message_id: str | None, in_reply_to: str | None,
                references: tuple[str, ...]) -> str | None:
    """First id of References, else In-Reply-To, else the mail's own Message-ID."""
    return references[0] if references else in_reply_to or message_id


def reply_subject(subject: str) -> str:
    bare = _REPLY_PREFIX.sub("", subject).strip()
    return f"Re: {bare}" if bare else "Re: your message"


def reply_references(message_id: str | None, references: list[str] | tuple[str, ...],
                     in_reply_to: str | None) -> list[str]:
    """References for our reply (RFC 5322 §3.6.4): theirs (or their In-Reply-To) + their id,
    kept short: the root and the latest ids."""
    refs = list(references) or ([in_reply_to] if in_reply_to else [])
    if message_id and message_id not in refs:
        refs.append(message_id)
    return refs if len(refs) <= 12 else [refs[0], *refs[-11:]]


# --- automatic mail ----------------------------------------------------------------------------

_PRECEDENCE = {"bulk", "junk", "list", "auto_reply", "auto-reply"}
_LIST_HEADERS = ("List-Id", "List-Unsubscribe", "List-Post")
_AUTO_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Auto-Response-Suppress", "X-Autogenerated")
_DAEMONS = {"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon"}


def automatic_reason(msg: Message, from_addr: str, message_id: str | None,
                     own_addresses: frozenset[str], own_domain: str | None) -> str | None:
    """Why this mail must not get an automatic answer (RFC 3834 and practice), or None."""
    auto = _header(msg, "Auto-Submitted").strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    if _header(msg, "Precedence").strip().lower() in _PRECEDENCE:
        return f"Precedence: {_header(msg, 'Precedence').strip()}"
    for name in (*_LIST_HEADERS, *_AUTO_HEADERS):
        if msg.get(name) is not None:
            return f"{name} header"
    content_type = msg.get_content_type()
    report = str(msg.get_param("report-type") or "").lower()
    if content_type == "multipart/report":
        return f"multipart/report ({report or 'unknown'})"
    return_path = msg.get("Return-Path")
    if return_path is not None and str(return_path).strip() in ("<>", ""):
        return "empty Return-Path (bounce)"
    if not from_addr:
        return "no From address"
    if from_addr.split("@", 1)[0] in _DAEMONS:
        return f"sent by {from_addr}"
    if from_addr in own_addresses or (_header(msg, "X-Loop").strip().lower() in own_addresses):
        return "our own address"
    if message_id and is_own_id(message_id, own_domain):
        return "our own Message-ID"
    return None


def is_own_id(message_id: str, own_domain: str | None) -> bool:
    left, _, right = message_id.strip("<>").rpartition("@")
    return left.endswith(f".{OWN_ID_MARK}") or (
        f".{OWN_ID_MARK}." in left and (own_domain is None or right.lower() == own_domain))


# --- helpers -------------------------------------------------------------------------------------


def _header(msg: Message, name: str) -> str:
    try:
        value: Any = msg.get(name)
    except (ValueError, IndexError, TypeError):  # a header the parser cannot read
        return ""
    return "" if value is None else str(value)


def _first_id(value: str) -> str | None:
    found = _MSGID.search(value)
    if found:
        return found.group(0)
    value = value.strip()
    return f"<{value}>" if value and " " not in value else None


def _address(value: str) -> tuple[str | None, str]:
    pairs = [p for p in getaddresses([value]) if p[1]]
    if not pairs:
        return None, ""
    name, addr = pairs[0]
    return (name.strip() or None), addr.strip().lower()


def _date(value: str) -> datetime | None:
    try:
        return parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError, IndexError):
        return None


def format_address(display: str | None, addr: str) -> str:
    """`Name <addr>` with the name encoded when needed."""
    user, _, domain = addr.partition("@")
    return str(Address(display_name=display or "", username=user, domain=domain))

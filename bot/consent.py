"""Consent: who may be sent what unprompted, recorded with time and source.

- Marketing goes only to a customer with an opt-in on that channel later than any opt-out
  (`python -m bot customer opt-in`, a store webhook saying the customer accepts marketing).
- An opt-out word on any channel (STOP, annulla iscrizione, ยกเลิก...), the email's one-click
  unsubscribe, or the CLI records an opt-out; playbook steps with the `opted_out` stop end.
- Do-not-contact stops every unprompted message, transactional ones too.

Tables: `consent` (per customer and channel) and `do_not_contact`; the customer export and
delete include both.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import unicodedata
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import ChannelState, Consent, Customer, DoNotContact, PlaybookJob

CO = Consent.__table__.c
PJ = PlaybookJob.__table__.c
_SECRET_KEY = "consent:unsubscribe-secret"

#: whole messages that mean "send me nothing more", by language (compared normalised)
OPT_OUT_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("stop", "unsubscribe", "stop all", "opt out", "opt-out", "stop messages",
           "unsubscribe me", "stop sending", "no more messages", "cancel subscription"),
    "it": ("annulla iscrizione", "disiscrivimi", "disiscriviti", "cancellami", "basta",
           "basta messaggi", "non scrivetemi più", "non scrivetemi piu", "stop messaggi",
           "annulla l'iscrizione", "rimuovimi"),
    "th": ("ยกเลิก", "หยุด", "ยกเลิกการรับข่าวสาร", "หยุดส่ง", "ไม่ต้องส่งมาอีก",
           "ยกเลิกสมาชิก", "เลิกรับข่าวสาร"),
}
_POLITE = re.compile(r"^(?:please|per favore|grazie|ค่ะ|ครับ|คะ)\s+|\s+(?:please|per favore|"
                     r"grazie|ค่ะ|ครับ|คะ|นะคะ|นะครับ)$")
_PUNCT = re.compile(r"[\s.!?,;:¡¿\"“”()\[\]-]+")


def _plain(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().replace("’", "'").strip()
    text = _PUNCT.sub(" ", text).strip()
    for _ in range(2):
        text = _POLITE.sub("", text).strip()
    # Thai politeness particles are written without a space
    return re.sub(r"(?:นะคะ|นะครับ|ค่ะ|ครับ|คะ)$", "", text).strip()


_LOOKUP = {_plain(word): lang for lang, words in OPT_OUT_WORDS.items() for word in words}


def opt_out_language(text: str) -> str | None:
    """The language of the opt-out word the whole message is, or None: "STOP", "Stop!",
    "disiscrivimi per favore", "ยกเลิกค่ะ". A sentence that mentions a word is a question."""
    if len(text) > 60:
        return None
    return _LOOKUP.get(_plain(text))


def _insert(conn: AsyncConnection):  # type: ignore[no-untyped-def]
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


async def record_opt_in(conn: AsyncConnection, customer_id: int, channel: str, *,
                        source: str, now: datetime) -> None:
    stmt = _insert(conn)(Consent.__table__).values(
        customer_id=customer_id, channel=channel, opted_in_at=now, opt_in_source=source[:200])
    await conn.execute(stmt.on_conflict_do_update(
        index_elements=["customer_id", "channel"],
        set_={"opted_in_at": now, "opt_in_source": source[:200]}))


async def record_opt_out(conn: AsyncConnection, customer_id: int, channel: str, *,
                         source: str, now: datetime) -> int:
    """Record the opt-out and cancel the customer's scheduled marketing steps on every
    channel, and the steps that stop on `opted_out`; returns how many were cancelled."""
    stmt = _insert(conn)(Consent.__table__).values(
        customer_id=customer_id, channel=channel, opted_out_at=now,
        opt_out_source=source[:200])
    await conn.execute(stmt.on_conflict_do_update(
        index_elements=["customer_id", "channel"],
        set_={"opted_out_at": now, "opt_out_source": source[:200]}))
    result = await conn.execute(update(PlaybookJob.__table__).where(
        PJ.customer_id == customer_id, PJ.state == "scheduled", PJ.kind == "marketing")
        .values(state="cancelled", reason=f"opted out ({source[:60]})", done_at=now))
    return int(result.rowcount or 0)


async def opted_in(conn: AsyncConnection, customer_id: int, channel: str) -> bool:
    row = (await conn.execute(select(CO.opted_in_at, CO.opted_out_at).where(
        CO.customer_id == customer_id, CO.channel == channel))).first()
    return row is not None and row.opted_in_at is not None and (
        row.opted_out_at is None or row.opted_in_at > row.opted_out_at)


async def opted_out_since(conn: AsyncConnection, customer_id: int, since: datetime) -> bool:
    """An opt-out on any channel at or after `since` (a playbook's `opted_out` stop)."""
    found = (await conn.execute(select(func.count()).select_from(Consent.__table__).where(
        CO.customer_id == customer_id, CO.opted_out_at >= since))).scalar()
    return bool(found)


async def opted_out(conn: AsyncConnection, customer_id: int, channel: str) -> bool:
    return not await opted_in(conn, customer_id, channel) and bool((await conn.execute(
        select(CO.opted_out_at).where(CO.customer_id == customer_id, CO.channel == channel,
                                      CO.opted_out_at.is_not(None)))).first())


async def set_do_not_contact(conn: AsyncConnection, customer_id: int, *, source: str,
                             now: datetime) -> None:
    await conn.execute(_insert(conn)(DoNotContact.__table__).values(
        customer_id=customer_id, source=source[:200], created_at=now)
        .on_conflict_do_nothing(index_elements=["customer_id"]))
    await conn.execute(update(PlaybookJob.__table__).where(
        PJ.customer_id == customer_id, PJ.state == "scheduled")
        .values(state="cancelled", reason="do not contact", done_at=now))


async def do_not_contact(conn: AsyncConnection, customer_id: int) -> bool:
    return (await conn.execute(select(DoNotContact.__table__.c.customer_id).where(
        DoNotContact.__table__.c.customer_id == customer_id))).first() is not None


# --- the command line (python -m bot customer opt-in / opt-out / do-not-contact) ----------------

CLI_CHANNELS = ("telegram", "slack", "whatsapp", "email", "webchat")


async def record_from_cli(database_url: str, action: str, customer_id: int,
                          channel: str | None, source: str) -> bool:
    """Record `action` now; False when there is no such customer."""
    db = Database(database_url)
    try:
        await db.upgrade()
        async with db.write() as conn:
            cu = Customer.__table__.c
            if (await conn.execute(select(cu.id).where(cu.id == customer_id))).first() is None:
                return False
            now = datetime.now(UTC)
            if action == "do-not-contact":
                await set_do_not_contact(conn, customer_id, source=source, now=now)
            elif action == "opt-in":
                await record_opt_in(conn, customer_id, str(channel), source=source, now=now)
            else:
                await record_opt_out(conn, customer_id, str(channel), source=source, now=now)
        return True
    finally:
        await db.close()


# --- unsubscribe links --------------------------------------------------------------------------

async def unsubscribe_secret(db: Database, configured: str | None) -> bytes:
    """UNSUBSCRIBE_SECRET, else a random one kept in the database (the same in every
    process, and across restarts, so links in sent mail keep working)."""
    if configured:
        return configured.encode()
    table = ChannelState.__table__
    async with db.write() as conn:
        row = (await conn.execute(select(table.c.value).where(table.c.key == _SECRET_KEY))
               ).scalar()
        if row is None:
            row = {"secret": secrets.token_urlsafe(32)}
            await conn.execute(_insert(conn)(table).values(
                key=_SECRET_KEY, value=row, updated_at=func.now())
                .on_conflict_do_nothing(index_elements=["key"]))
            row = (await conn.execute(select(table.c.value).where(table.c.key == _SECRET_KEY))
                   ).scalar()
    assert row is not None
    return str(row["secret"]).encode()


def make_token(secret: bytes, customer_id: int, channel: str) -> str:
    body = base64.urlsafe_b64encode(f"{customer_id}:{channel}".encode()).decode().rstrip("=")
    mac = hmac.new(secret, body.encode(), hashlib.sha256).digest()[:18]
    return f"{body}.{base64.urlsafe_b64encode(mac).decode()}"


def read_token(secret: bytes, token: str) -> tuple[int, str] | None:
    """(customer id, channel) of a token we signed, else None."""
    body, _, mac = token.partition(".")
    if not body or not mac or len(token) > 200:
        return None
    expected = base64.urlsafe_b64encode(
        hmac.new(secret, body.encode(), hashlib.sha256).digest()[:18]).decode()
    if not hmac.compare_digest(expected, mac):
        return None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        customer, channel = raw.split(":", 1)
        return int(customer), channel
    except (ValueError, UnicodeDecodeError):
        return None

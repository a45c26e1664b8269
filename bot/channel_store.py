"""The core's side of `core.stores.ChannelStore`: the SQL a channel would otherwise run."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from bot.db.engine import Database
from bot.db.models import ChannelState, Conversation, Message, WebchatVisitor
from core.batching import GroupRead
from core.messages import OutboundMessage
from core.stores import MissedReply, TranscriptRow, VisitorContact

ST = ChannelState.__table__.c
MS = Message.__table__.c
CV = Conversation.__table__.c
WV = WebchatVisitor.__table__.c
_CONVERSATIONS = select(CV.address, CV.id, CV.stage, CV.status).where(
    CV.channel == bindparam("channel"), CV.address.in_(bindparam("addresses", expanding=True)))
_VISITORS = select(WV.visitor, WV.customer_ref, WV.name, WV.email, WV.phone, WV.verified,
                   WV.page).where(WV.visitor.in_(bindparam("visitors", expanding=True)))
_NEW_MESSAGES = (
    select(MS.id, MS.conversation_id, MS.direction, MS.author, MS.text, MS.created_at,
           MS.status, MS.language, MS.attachments)
    .where(MS.conversation_id.in_(bindparam("conversations", expanding=True)),
           MS.id > bindparam("after"), MS.direction.in_(("in", "out")))  # never staff notes
    .order_by(MS.id))
_SEEN = (update(WebchatVisitor.__table__).where(WV.visitor == bindparam("v"))
         .values(seen_at=bindparam("at")))


class DatabaseChannelStore:
    """Lookups by address made at the same moment (a burst of new visitors) share one read."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._visitors: GroupRead[str, VisitorContact] = GroupRead(self._read_visitors)
        self._conversations: dict[str, GroupRead[str, list[Any]]] = {}

    async def get_state(self, key: str) -> dict[str, Any] | None:
        async with self.db.read() as conn:
            value = (await conn.execute(select(ST.value).where(ST.key == key))).scalar()
        return dict(value) if value else None

    async def put_state(self, key: str, value: Mapping[str, Any]) -> None:
        async with self.db.write() as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(ChannelState.__table__).values(
                key=key, value=dict(value), updated_at=datetime.now(UTC))
            await conn.execute(stmt.on_conflict_do_update(
                index_elements=["key"], set_={"value": stmt.excluded.value,
                                              "updated_at": stmt.excluded.updated_at}))

    async def reply_context(self, message: OutboundMessage
                            ) -> tuple[str, Mapping[str, Any] | None]:
        async with self.db.read() as conn:
            author = (await conn.execute(select(MS.author).where(MS.id == message.message_id))
                      ).scalar() or "bot"
            stmt = select(MS.meta).where(MS.conversation_id == message.conversation_id,
                                         MS.direction == "in")
            in_id = message.meta.get("in_reply_to")
            stmt = stmt.where(MS.id == in_id) if isinstance(in_id, int) else stmt.where(
                MS.id < message.message_id).order_by(MS.id.desc()).limit(1)
            meta = (await conn.execute(stmt)).scalar()
        return str(author), meta

    async def bot_replies_since(self, channel: str, address: str,
                                since: datetime) -> set[int]:
        async with self.db.read() as conn:
            return {int(i) for i in (await conn.execute(
                select(MS.id).join(Conversation.__table__, CV.id == MS.conversation_id).where(
                    CV.channel == channel, CV.address == address, MS.direction == "out",
                    MS.author == "bot", MS.sent_at >= since))).scalars()}

    async def transcript(self, channel: str, address: str, after: int,
                         limit: int) -> list[TranscriptRow]:
        reads = self._conversations.get(channel)
        if reads is None:
            reads = self._conversations[channel] = GroupRead(
                lambda addresses: self._read_conversations(channel, addresses))
        convs = {r.id: r for r in await reads.get(address) or ()}
        if not convs:
            return []
        async with self.db.read() as conn:
            rows = (await conn.execute(_NEW_MESSAGES.limit(limit), {
                "conversations": sorted(convs), "after": after})).all()
        return [TranscriptRow(r.id, r.conversation_id, r.direction, r.author, r.text,
                              r.created_at, r.status, r.language, r.attachments or (),
                              convs[r.conversation_id].stage,
                              convs[r.conversation_id].status) for r in rows]

    async def _read_conversations(self, channel: str, addresses: Sequence[str]
                                  ) -> dict[str, list[Any]]:
        by_address: dict[str, list[Any]] = defaultdict(list)
        async with self.db.read() as conn:
            for r in (await conn.execute(_CONVERSATIONS, {"channel": channel,
                                                          "addresses": addresses})).all():
                by_address[r.address].append(r)
        return by_address

    async def visitor(self, visitor: str) -> VisitorContact | None:
        return await self._visitors.get(visitor)

    async def _read_visitors(self, visitors: Sequence[str]) -> dict[str, VisitorContact]:
        async with self.db.read() as conn:
            rows = (await conn.execute(_VISITORS, {"visitors": visitors})).all()
        return {r.visitor: VisitorContact(r.customer_ref, r.name, r.email, r.phone,
                                          bool(r.verified), r.page) for r in rows}

    async def save_visitor(self, visitor: str, contact: VisitorContact, *, new: bool,
                           now: datetime) -> None:
        values = {"customer_ref": contact.customer_ref, "name": contact.name,
                  "email": contact.email, "phone": contact.phone,
                  "verified": contact.verified, "page": contact.page, "updated_at": now}
        async with self.db.write() as conn:
            if new:
                await conn.execute(insert(WebchatVisitor.__table__).values(
                    visitor=visitor, seen_at=now, emailed_through=0, **values))
            else:
                await conn.execute(update(WebchatVisitor.__table__)
                                   .where(WV.visitor == visitor).values(values))

    async def visitors_seen(self, seen: Mapping[str, datetime]) -> None:
        async with self.db.write() as conn:
            await conn.execute(_SEEN, [{"v": v, "at": seen[v]} for v in sorted(seen)])

    async def missed_replies(self, channel: str, *, before: datetime,
                             since: datetime) -> list[MissedReply]:
        stmt = (select(WV.visitor, WV.email, WV.page, MS.id, MS.text, MS.language)
                .select_from(WebchatVisitor.__table__)
                .join(Conversation.__table__, (CV.channel == channel)
                      & (CV.address == WV.visitor))
                .join(Message.__table__, MS.conversation_id == CV.id)
                .where(WV.email.is_not(None), MS.direction == "out",
                       MS.author.like("staff:%"), MS.id > WV.emailed_through,
                       MS.status.in_(("sent", "delivered")), MS.created_at <= before,
                       MS.created_at >= since,
                       WV.seen_at.is_(None) | (WV.seen_at < MS.created_at))
                .order_by(WV.visitor, MS.id).limit(1000))
        async with self.db.read() as conn:
            return [MissedReply(r.visitor, r.email, r.page, r.id, r.text, r.language)
                    for r in (await conn.execute(stmt)).all()]

    async def emailed_through(self, visitor: str, message_id: int) -> None:
        async with self.db.write() as conn:
            await conn.execute(update(WebchatVisitor.__table__)
                               .where(WV.visitor == visitor)
                               .values(emailed_through=message_id))

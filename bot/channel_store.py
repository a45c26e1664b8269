"""The core's side of `core.stores.ChannelStore`: the SQL a channel would otherwise run."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from bot.db.engine import Database
from bot.db.models import ChannelState, Conversation, Message
from core.messages import OutboundMessage

ST = ChannelState.__table__.c
MS = Message.__table__.c
CV = Conversation.__table__.c


class DatabaseChannelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

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

"""Order data pushed by the store, and the lifecycle moves it causes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import CustomerFacts, OrderIn, record_order
from bot.db.models import Conversation, ConversationStatus, Customer
from bot.errors import InputError
from bot.lifecycle import LifecycleRules, StageSignal, record_stage_change

CV = Conversation.__table__.c
CU = Customer.__table__.c


async def push_orders(conn: AsyncConnection, rules: LifecycleRules, customer_id: int,
                      orders: Sequence[OrderIn]) -> dict[str, Any]:
    """Record orders for a customer and re-evaluate the stage of their open conversations."""
    exists = (await conn.execute(select(CU.id, CU.stage).where(CU.id == customer_id))).first()
    if exists is None:
        raise InputError(f"customer {customer_id} does not exist", status=404)
    facts = CustomerFacts()
    for order in orders:
        facts = await record_order(conn, customer_id, order)
    last = orders[-1].order_id if orders else None
    convs = (await conn.execute(
        select(CV.id, CV.stage).where(CV.customer_id == customer_id,
                                      CV.status != ConversationStatus.RESOLVED))).all()
    changes = []
    signal = StageSignal("order", facts=facts)
    targets = [(c.id, c.stage) for c in convs] or [(None, exists.stage)]
    for conv_id, stage in targets:
        decision = rules.decide(stage, signal)
        if decision is not None:
            await record_stage_change(conn, conversation_id=conv_id, customer_id=customer_id,
                                      old=stage, new=decision.stage,
                                      reason=f"{decision.reason} (order {last})")
            changes.append({"conversation_id": conv_id, "from": stage, "to": decision.stage})
    return {"customer_id": customer_id, "orders_count": facts.orders_count,
            "total_spent": facts.total_spent, "stage_changes": changes}

"""Order data from the store (API, CSV import, platform webhooks) and the stage moves it causes.

Every source ends in `apply_orders`: each order is stored on the one order model, and its
event (a new order, an update, a cancellation, a refund) is evaluated by the lifecycle rules
against the customer's stage, once per customer.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.customers import (
    OrderIn,
    OrderWrite,
    find_or_create_by_contact,
    refresh_order_facts,
    upsert_order,
)
from bot.db.engine import Database
from bot.db.models import Conversation, ConversationStatus, Customer
from bot.lifecycle import LifecycleRules, StageSignal, apply_customer_stage
from bot.playbook_jobs import fire_order
from bot.playbooks import Playbooks
from core.clock import Clock
from core.errors import InputError

CV = Conversation.__table__.c
CU = Customer.__table__.c


def order_event(order: OrderIn, written: OrderWrite) -> str:
    """The lifecycle event of one stored order."""
    if order.status == "cancelled" and written.previous_status != "cancelled":
        return "cancel"
    if order.status == "refunded" and written.previous_status != "refunded":
        return "refund"
    if written.created and order.status not in ("cancelled", "refunded"):
        return "order"
    return "order_update"


async def latest_open_conversation(conn: AsyncConnection, customer_id: int) -> int | None:
    """The conversation a change caused outside any message is noted on (its newest open one),
    so the conversation records the stage the customer had in it."""
    found = (await conn.execute(
        select(CV.id).where(CV.customer_id == customer_id,
                            CV.status != ConversationStatus.RESOLVED)
        .order_by(CV.id.desc()).limit(1))).scalar()
    return None if found is None else int(found)


async def apply_orders(conn: AsyncConnection, rules: LifecycleRules, customer_id: int,
                       orders: Sequence[OrderIn], *, now: datetime | None = None,
                       playbooks: Playbooks | None = None) -> dict[str, Any]:
    """Store orders for a customer, move the customer's stage as the rules say, and schedule
    the playbook steps each order event starts."""
    now = now or datetime.now(UTC)
    exists = (await conn.execute(select(CU.id).where(CU.id == customer_id))).first()
    if exists is None:
        raise InputError(f"customer {customer_id} does not exist", status=404)
    changes: list[dict[str, Any]] = []
    owners = {customer_id}
    for order in orders:
        written = await upsert_order(conn, customer_id, order, now=now)
        owner = written.customer_id
        owners.add(owner)
        facts = await refresh_order_facts(conn, owner)
        if written.stale:
            continue
        await fire_order(conn, playbooks, order, written, now=now)
        change = await apply_customer_stage(
            conn, rules, customer_id=owner, signal=StageSignal(order_event(order, written),
                                                               now=now),
            conversation_id=await latest_open_conversation(conn, owner),
            reason_suffix=f" (order {order.number or order.order_id})", facts=facts)
        if change is not None:
            changes.append({"conversation_id": change.conversation_id, "from": change.old,
                            "to": change.new, "reason": change.reason})
    facts = await refresh_order_facts(conn, customer_id)
    return {"customer_id": customer_id, "orders_count": facts.orders_count,
            "total_spent": facts.total_spent, "stage_changes": changes}


async def push_orders(conn: AsyncConnection, rules: LifecycleRules, customer_id: int,
                      orders: Sequence[OrderIn], *, now: datetime | None = None,
                      playbooks: Playbooks | None = None) -> dict[str, Any]:
    """Record orders pushed by the order API or the CSV import (see `apply_orders`)."""
    return await apply_orders(conn, rules, customer_id, orders, now=now, playbooks=playbooks)


# --- CSV import --------------------------------------------------------------------------------

CsvRow = tuple[int, dict[str, str], OrderIn]


#: `import_orders` holds SQLite's write lock this long at most, then lets others write
IMPORT_SLICE_SECONDS = 0.1
IMPORT_PAUSE_SECONDS = 0.05


def read_orders_csv(path: Path) -> list[CsvRow]:
    """Rows of an order CSV (email or phone, order_id, total, currency, placed_at, status,
    number, tracking_number, tracking_url, carrier), all validated before anything is stored;
    InputError names the file and line."""
    rows: list[CsvRow] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or ())
        missing = {"order_id", "total"} - fields
        if missing or not ({"email", "phone"} & fields):
            raise InputError(f"{path}: needs columns order_id, total and email or phone "
                             f"(missing {', '.join(sorted(missing)) or 'email/phone'})")
        for line_no, row in enumerate(reader, start=2):
            try:
                rows.append((line_no, row, OrderIn.parse(row, source="csv")))
            except InputError as exc:
                raise InputError(f"{path}:{line_no}: {exc}") from None
    return rows


async def import_orders(db: Database, rules: LifecycleRules, path: Path, rows: Sequence[CsvRow],
                        *, clock: Clock) -> int:
    """Store the rows (all validated before) in short transactions with a pause between them,
    so the running service's webhooks get the write lock meanwhile; returns the number of stage
    changes. An import stopped half way can run again: stored orders are updated, not doubled.
    """
    changes = 0
    done = 0
    loop = asyncio.get_running_loop()
    while done < len(rows):
        first = done
        async with db.write() as conn:
            deadline = loop.time() + IMPORT_SLICE_SECONDS
            while done < len(rows) and (done == first or loop.time() < deadline):
                line_no, row, order = rows[done]
                try:
                    cid = await find_or_create_by_contact(
                        conn, email=row.get("email"), phone=row.get("phone"),
                        name=row.get("name"))
                except InputError as exc:
                    kept = f" (the {first} rows before are stored; fix it and import again)" \
                        if first else ""
                    raise InputError(f"{path}:{line_no}: {exc}{kept}") from None
                result = await apply_orders(conn, rules, cid, [order], now=clock())
                changes += len(result["stage_changes"])
                done += 1
        if done < len(rows) and db.is_sqlite:
            await asyncio.sleep(IMPORT_PAUSE_SECONDS)  # let the service's writers in
    return changes

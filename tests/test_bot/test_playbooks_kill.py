"""A service process killed with SIGKILL while playbook steps are scheduled neither loses nor
repeats one: the real `python -m bot` on SQLite, a signed Shopify order, the fake Twilio as
the only network, killed once before the first step is due and once between the steps."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.conftest import ROOT, eventually, free_port, stays
from tests.fakes.twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    OUR_NUMBER,
    PUBLIC_URL,
    fake_twilio,
    inbound_params,
    post_signed,
)
from tests.test_bot.playbook_helpers import PHONE, order, post_order
from tests.test_bot.test_store_webhooks import SHOPIFY_SECRET

sys.path.insert(0, str(ROOT))
from bench.scale import Cluster, base_env

pytestmark = pytest.mark.timeout(300)

TWO_STEPS = """\
playbooks:
  - name: post_purchase
    trigger: {order: delivered}
    stop: [opted_out]
    steps:
      - delay: 3s
        kind: transactional
        message: {en: "First check on $order_number", it: "x", th: "x"}
      - delay: 9s
        kind: transactional
        message: {en: "Second check on $order_number", it: "x", th: "x"}
"""


def _count(accepted: list[dict[str, Any]], needle: str) -> int:
    return sum(1 for m in accepted if needle in str(m.get("Body") or ""))


async def test_sigkill_while_steps_are_scheduled_loses_and_repeats_nothing(
        tmp_path: Path) -> None:
    playbooks = tmp_path / "playbooks.yaml"
    playbooks.write_text(TWO_STEPS, encoding="utf-8")
    port = free_port()
    async with fake_twilio() as fake:
        env = base_env(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", port,
                       PLAYBOOKS_FILE=str(playbooks), PLAYBOOK_TICK_SECONDS="0.2",
                       SHOPIFY_WEBHOOK_SECRET=SHOPIFY_SECRET, TWILIO_ACCOUNT_SID=ACCOUNT_SID,
                       TWILIO_AUTH_TOKEN=AUTH_TOKEN, TWILIO_WHATSAPP_FROM=OUR_NUMBER,
                       TWILIO_API_BASE=fake.url, PUBLIC_URL=PUBLIC_URL, LOG_LEVEL="INFO")
        cluster = Cluster(env, port, logs=tmp_path)
        shop = SimpleNamespace(port=port)
        try:
            cluster.start("first", "serve")
            await cluster.wait_ready()
            assert await post_signed(shop, PUBLIC_URL + "/webhooks/twilio/whatsapp",
                                     inbound_params("SMhi01", "hi", phone=PHONE)) == 200
            await eventually(lambda: fake.accepted, what="the greeting answered")
            await post_order(shop, order("paid"), "orders/create", "wh-create-1")
            await post_order(shop, order("delivered"), "orders/updated", "wh-delivered-1")

            await _kill(cluster, "first")  # both steps committed, neither due
            cluster.start("second", "serve")
            await cluster.wait_ready()
            await eventually(lambda: _count(fake.accepted, "First check on 1001"),
                             timeout=30, what="the first step after a restart")
            # the first step committed as sent (a kill between the platform's accept and
            # that commit would send it again: at-least-once at the platform's edge)
            await eventually(lambda: _sent(tmp_path / "shop.db", "First check on 1001"),
                             what="the first step recorded as sent")
            await _kill(cluster, "second")  # the second step still to come

            cluster.start("third", "serve")
            await cluster.wait_ready()
            await eventually(lambda: _count(fake.accepted, "Second check on 1001"),
                             timeout=30, what="the second step after a restart")
            await stays(lambda: _count(fake.accepted, "First check") == 1
                        and _count(fake.accepted, "Second check") == 1,
                        window=1.5, what="each step sent once")
        finally:
            cluster.stop()
    logs = "".join(log.read_text(errors="replace") for log in tmp_path.glob("*.log"))
    assert "Traceback" not in logs, logs[-3000:]
    for contact in (order("delivered")["customer"]["email"], PHONE):
        assert contact not in logs  # contact details stay out of the logs


def _sent(db: Path, text: str) -> bool:
    with sqlite3.connect(db) as conn:
        return bool(conn.execute("SELECT count(*) FROM message WHERE text = ? AND status = 'sent'",
                                 (text,)).fetchone()[0] == 1)


async def _kill(cluster: Cluster, name: str) -> None:
    proc = cluster.procs.pop(name)
    proc.send_signal(signal.SIGKILL)
    assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL

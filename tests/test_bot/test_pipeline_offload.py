"""FAQ matching in the helper process: the same answers as in the service, never a stale FAQ's,
and a helper that dies is replaced without a message going unanswered."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import Service
from bot.pipeline.offload import UnderstandingOffload
from bot.pipeline.understand import understand
from channels.base import InboundMessage
from faq.store import FaqStore
from tests.conftest import ROOT, chat, eventually, free_port

sys.path.insert(0, str(ROOT))
from bench.scale import Cluster, base_env

TEXTS = [
    "How much is shipping?", "hi, what are the delivery costs", "Quanto costa la spedizione?",
    "ค่าส่งเท่าไหร่", "How much is shipping? And can I return a dress?", "thanks!", "ciao",
    "I want to talk to a human please", "worst shop ever, I want my money back",
    "Do you sell garden furniture?", "è la terza volta che il mio ordine arriva in ritardo",
    "it didn't help", "hmm", "?", "สวัสดีค่ะ",
]


def messages(texts: list[str]) -> list[InboundMessage]:
    return [InboundMessage(channel="webchat", external_id=f"m{i}", address="visitor-0001",
                           text=t) for i, t in enumerate(texts)]


def in_process(faq: FaqStore, texts: list[str]) -> list[Any]:
    return [understand(m, faq.matcher.match) for m in messages(texts)]


async def ready(offload: UnderstandingOffload) -> list[Any]:
    """What the helper answers for TEXTS, once it is up."""
    return await eventually(lambda: offload.understand_many(messages(TEXTS)), timeout=60,
                            what="the matching helper answers")


async def test_the_helper_understands_every_message_as_the_service_would() -> None:
    faq = FaqStore(ROOT / "faq" / "sample")
    offload = UnderstandingOffload(faq)
    offload.start()
    try:
        got = await ready(offload)
        assert got == in_process(faq, TEXTS)
        # the answers are the service's own entries, not copies from the other process
        assert got[0].match is not None and got[0].match.entry is faq.get("shipping_costs")
        assert len(got[4].answers) == 2  # two questions, two answers
    finally:
        await offload.stop()


async def test_after_an_faq_edit_the_helper_with_the_old_faq_is_not_used(
        tmp_path: Path) -> None:
    shutil.copytree(ROOT / "faq" / "sample", tmp_path / "faq")
    faq = FaqStore(tmp_path / "faq")
    offload = UnderstandingOffload(faq)
    offload.start()
    try:
        await ready(offload)
        question = "Can I pay with a goat?"
        before = in_process(faq, [question])[0]
        assert before.match.entry is None or before.match.entry.id != "goats"
        payments = tmp_path / "faq" / "payments.yaml"
        payments.write_text(payments.read_text(encoding="utf-8") + (
            "\n- id: goats\n  questions: ['Can I pay with a goat?']\n"
            "  answer: {en: 'We take no goats.', it: 'Niente capre.', th: 'ไม่รับแพะ'}\n"),
            encoding="utf-8")
        assert faq.reload()
        # the old helper's answers are refused at once; a new helper has the new entry
        assert await offload.understand_many(messages([question])) is None
        got = await eventually(lambda: offload.understand_many(messages([question])),
                               timeout=60, what="a helper with the edited FAQ")
        assert got[0].match.entry is faq.get("goats")
        assert got == in_process(faq, [question])
    finally:
        await offload.stop()


async def test_a_killed_helper_is_replaced() -> None:
    faq = FaqStore(ROOT / "faq" / "sample")
    offload = UnderstandingOffload(faq)
    offload.start()
    try:
        await ready(offload)
        (helper,) = multiprocessing.active_children()
        assert helper.pid is not None
        os.kill(helper.pid, signal.SIGKILL)
        # the caller is told to match in-process (None) until another helper is up
        await eventually(lambda: _none_or_broken(offload), timeout=30,
                         what="the dead helper noticed")
        assert await ready(offload) == in_process(faq, TEXTS)
        assert [p.pid for p in multiprocessing.active_children()] != [helper.pid]
    finally:
        await offload.stop()
    assert not multiprocessing.active_children()  # stopping leaves no process behind


async def _none_or_broken(offload: UnderstandingOffload) -> bool:
    return await offload.understand_many(messages(TEXTS[:1])) is None


async def test_the_service_answers_through_its_helper(make_settings: Any) -> None:
    service = Service(make_settings(match_processes=1))
    await service.start()
    try:
        assert service.offload is not None
        await ready(service.offload)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{service.port}") as client:
            _, reply = await chat(client, "Quanto costa la spedizione?")
        entry = service.faq.get("shipping_costs")
        assert entry is not None
        assert reply["text"] == entry.answer_for("it", "en", {"store_name": "Demo Shop"})[0]
        assert service.offload.offloaded >= len(TEXTS) + 1
    finally:
        await service.stop()


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(c) for c in (task / "children").read_text().split())
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads Linux /proc")
async def test_a_service_killed_outright_leaves_no_helper_behind(tmp_path: Path) -> None:
    port = free_port()
    cluster = Cluster(base_env(f"sqlite+aiosqlite:///{tmp_path / 'shop.db'}", port,
                               MATCH_PROCESSES="1"), port, logs=tmp_path)
    try:
        proc = cluster.start("serve", "serve")
        await cluster.wait_ready()
        helpers = await eventually(lambda: _children(proc.pid), timeout=30,
                                   what="the matching helper started")
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
        await eventually(lambda: not any(_running(p) for p in helpers), timeout=10,
                         what="the helper gone with its service")
    finally:
        cluster.stop()


def test_serve_has_a_helper_on_more_than_one_core_and_worker_processes_none(
        make_settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    auto = make_settings(match_processes=None)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert auto.matching_helpers(serves_http=True) == 1
    assert auto.matching_helpers(serves_http=False) == 0  # `worker`: one per core already
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert auto.matching_helpers(serves_http=True) == 0
    assert make_settings(match_processes=3).matching_helpers(serves_http=False) == 3

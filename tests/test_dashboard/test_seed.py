"""`python bench/seed.py`: a living history on every channel, language and stage."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bench import seed
from bot.admin import queries as mq
from bot.db.engine import Database
from bot.settings import SAMPLE_FAQ_DIR
from faq.loader import load_faq_dir


@pytest.fixture
def seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
           capsys: pytest.CaptureFixture[str]) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'demo.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    seed.main(["--messages", "3000", "--days", "60"])
    added = re.search(r"added (\d+) messages", capsys.readouterr().out)
    assert added is not None and 2900 <= int(added.group(1)) <= 3100  # about the number asked
    return url


def test_seed_demo_covers_channels_languages_stages_and_real_faq_ids(seeded: str) -> None:
    faq_ids = {e.id for e in load_faq_dir(SAMPLE_FAQ_DIR)}

    async def check() -> None:
        db = Database(seeded)
        try:
            async with db.read() as conn:
                async def distinct(col) -> set[str]:
                    return {r[0] for r in (await conn.execute(select(col).distinct())).all()}

                assert await distinct(mq.MS.channel) == {"webchat", "whatsapp", "email",
                                                         "telegram", "slack"}
                assert await distinct(mq.MS.language) == {"en", "it", "th"}
                assert await distinct(mq.SC.to_stage) == set(mq.STAGES)
                used = await distinct(mq.MS.faq_id)
                assert used - {None} <= faq_ids and len(used - {None}) >= 5
                csat = await distinct(mq.ES.csat)
                assert csat - {None} <= {1, 2, 3, 4, 5} and len(csat - {None}) >= 3
                oldest = (await conn.execute(select(func.min(mq.MS.created_at)))).scalar_one()
                assert oldest < datetime.now(UTC) - timedelta(days=40)
                # the dashboard's replayed customer series ends at today's customer stages
                now = datetime.now(UTC)
                period = mq.Period(now - timedelta(days=30), now + timedelta(seconds=1))
                data = await mq.stages_over_time(conn, period)
                last = {s["stage"]: s["counts"][-1] for s in data["customers"]}
                assert {k: v for k, v in last.items() if v} == data["customers_now"]
                no_match = await mq.unanswered_questions(conn, period)
                assert no_match  # something for FAQ suggestions to group
        finally:
            await db.close()

    asyncio.run(check())


def test_seeding_twice_adds_rows(seeded: str) -> None:
    seed.main(["--messages", "500", "--seed", "9"])

    async def count() -> int:
        db = Database(seeded)
        try:
            async with db.read() as conn:
                return int((await conn.execute(select(func.count()).select_from(mq.MESSAGE)))
                           .scalar_one())
        finally:
            await db.close()

    assert 3500 <= asyncio.run(count()) <= 3600

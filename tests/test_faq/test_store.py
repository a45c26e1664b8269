"""The live FAQ: a broken edit never replaces a good FAQ, a good edit is picked up."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path

import pytest

from core.errors import FaqLoadError
from faq.store import FaqStore
from tests.conftest import eventually

from .conftest import SAMPLE_DIR

EXTRA = """\
- id: opening_gift
  questions:
    - Do you give a gift with the first order?
    - C'è un regalo col primo ordine?
  answer:
    en: Yes, a tote bag.
    it: Sì, una shopper.
"""


@pytest.fixture
def faq_dir(tmp_path: Path) -> Path:
    target = tmp_path / "faq"
    shutil.copytree(SAMPLE_DIR, target)
    return target


def test_initial_load_failure_raises(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("- id: x\n  questions: [a\n", encoding="utf-8")
    with pytest.raises(FaqLoadError):
        FaqStore(tmp_path)


def test_reload_keeps_last_good_faq(faq_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = FaqStore(faq_dir)
    assert store.version == 1 and store.last_error is None
    before = len(store.entries)
    (faq_dir / "orders.yaml").write_text("- id: broken\n  questions: [oops\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="faq.store"):
        assert store.reload() is False
    assert store.version == 1
    assert len(store.entries) == before
    assert store.matcher.match("where is my order?").faq_id == "order_tracking"
    assert store.last_error is not None and store.last_error.path.endswith("orders.yaml")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "orders.yaml:3: YAML syntax error" in warnings[0].getMessage()
    assert "flow sequence started at line 2" in warnings[0].getMessage()


def test_reload_picks_up_a_new_entry(faq_dir: Path) -> None:
    store = FaqStore(faq_dir, threshold=0.3)
    assert store.get("opening_gift") is None
    (faq_dir / "extra.yaml").write_text(EXTRA, encoding="utf-8")
    assert store.reload() is True
    assert store.version == 2 and store.last_error is None
    assert store.get("opening_gift") is not None
    assert store.matcher.match("gift with my first order?").faq_id == "opening_gift"
    assert store.matcher.threshold == 0.3


@pytest.mark.timeout(20)
async def test_watch_reloads_on_change_and_survives_a_broken_file(faq_dir: Path) -> None:
    store = FaqStore(faq_dir)
    stop = asyncio.Event()
    watcher = asyncio.create_task(store.watch(stop))
    try:
        await asyncio.sleep(0.3)  # let the watcher start
        (faq_dir / "extra.yaml").write_text(EXTRA, encoding="utf-8")
        await eventually(lambda: store.get("opening_gift") is not None, timeout=5.0)
        assert store.version == 2
        (faq_dir / "extra.yaml").write_text("- id: [\n", encoding="utf-8")
        await eventually(lambda: store.last_error is not None, timeout=5.0)
        assert store.version == 2 and store.get("opening_gift") is not None
    finally:
        stop.set()
        await asyncio.wait_for(watcher, timeout=5)

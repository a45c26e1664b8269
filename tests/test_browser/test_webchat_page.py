"""A person in a real browser types into the web chat and reads the answer."""

from __future__ import annotations

from typing import Any

import pytest

from bot.app import Service
from tests.test_browser.conftest import ARTIFACTS

pytestmark = pytest.mark.browser


async def _ask(page: Any, text: str) -> None:
    await page.fill("#text", text)
    await page.click("#send")


async def test_question_typed_in_the_page_gets_the_faq_answer(browser: Any,
                                                              service: Service) -> None:
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{service.port}/")
    await _ask(page, "How long does delivery take?")
    answer = page.locator(".msg.bot").first
    await answer.wait_for(timeout=10_000)
    delivery = service.faq.get("delivery_time")
    shipping = service.faq.get("shipping_costs")
    assert delivery is not None and shipping is not None
    assert delivery.answers["en"] in await answer.inner_text()
    await _ask(page, "Quanto costa la spedizione?")
    await page.locator(".msg.bot").nth(1).wait_for(timeout=10_000)
    assert shipping.answers["it"] in await page.locator(".msg.bot").nth(1).inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "webchat.png"))


async def test_unknown_question_shows_the_escalation_acknowledgement(
        browser: Any, service: Service) -> None:
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{service.port}/")
    await _ask(page, "Can you engrave a poem on a teapot for my grandmother?")
    answer = page.locator(".msg.bot").first
    await answer.wait_for(timeout=10_000)
    assert "A person will reply" in await answer.inner_text()
    await page.wait_for_function(
        "document.getElementById('status').textContent.includes('person from our team')")

"""A person in a real browser types into the web chat and reads the answer."""

from __future__ import annotations

from typing import Any

import pytest

from bot.app import Service
from tests.fakes.slack import fake_slack, slack_settings
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


async def test_without_a_desk_an_unknown_question_promises_no_person(
        browser: Any, service: Service) -> None:
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{service.port}/")
    await _ask(page, "Can you engrave a poem on a teapot for my grandmother?")
    answer = page.locator(".msg.bot").first
    await answer.wait_for(timeout=10_000)
    text = await answer.inner_text()
    assert "noted your question" in text and "person" not in text
    assert "person" not in await page.locator("#status").inner_text()


async def test_with_the_slack_desk_an_unknown_question_says_a_person_will_reply(
        browser: Any, make_settings: Any) -> None:
    async with fake_slack() as slack:
        service = Service(make_settings(**slack_settings(slack, slack_staff_channel="CSTAFF")))
        await service.start()
        try:
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{service.port}/")
            await _ask(page, "Can you engrave a poem on a teapot for my grandmother?")
            answer = page.locator(".msg.bot").first
            await answer.wait_for(timeout=10_000)
            assert "A person will reply" in await answer.inner_text()
            await page.wait_for_function(
                "document.getElementById('status').textContent"
                ".includes('person from our team')")
        finally:
            await service.stop()

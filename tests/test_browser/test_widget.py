"""A store's own page (another origin) embeds the chat with one script tag."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from sqlalchemy import func, select

from bot.app import Service
from bot.db.models import Message
from core.errors import ConfigError
from tests.fakes.slack import fake_slack, send_event, slack_settings

pytestmark = pytest.mark.browser
DOCS = Path(__file__).resolve().parents[2] / "docs"
AXE = Path(__file__).resolve().parents[2] / ".test-deps/node_modules/axe-core/axe.min.js"

STORE_PAGE = """<!doctype html><html lang="{lang}"><head><title>Shop</title></head>
<body><main><h1>Teapots</h1></main>
<script src="{support}/widget.js" async></script></body></html>"""


@asynccontextmanager
async def support_service(make_settings: Any, **overrides: Any) -> AsyncIterator[Service]:
    service = Service(make_settings(**overrides))
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def _open_and_ask(page: Any, text: str) -> None:
    await page.click("#storedesk-widget >> #launch")
    await page.fill("#storedesk-widget >> #text", text)
    await page.press("#storedesk-widget >> #text", "Enter")


async def test_the_script_tag_on_the_store_page_chats_in_the_shoppers_language(
        browser: Any, make_settings: Any) -> None:
    async with store_site_placeholder() as holder, support_service(make_settings,
                               webchat_allowed_origins=holder.origin) as service:
        holder.support = f"http://127.0.0.1:{service.port}"
        page = await browser.new_page()
        await page.goto(holder.origin + "/")
        launch = page.locator("#storedesk-widget >> #launch")
        assert await launch.get_attribute("aria-label") == "Chat with us"
        assert await page.locator("#storedesk-widget >> #title").inner_text() == "Demo Shop"
        await _open_and_ask(page, "How long does delivery take?")
        delivery = service.faq.get("delivery_time")
        shipping = service.faq.get("shipping_costs")
        assert delivery is not None and shipping is not None
        answer = page.locator("#storedesk-widget >> li.them:not(#welcome)")
        await answer.first.wait_for(timeout=10_000)
        assert delivery.answers["en"][:40] in await answer.first.inner_text()
        assert await page.locator("#storedesk-widget >> #send").inner_text() == "Send"
        await page.fill("#storedesk-widget >> #text", "Quanto costa la spedizione?")
        await page.press("#storedesk-widget >> #text", "Enter")
        await answer.nth(1).wait_for(timeout=10_000)
        assert shipping.answers["it"][:40] in await answer.nth(1).inner_text()
        send = page.locator("#storedesk-widget >> #send")
        await page.wait_for_function(
            "document.getElementById('storedesk-widget').shadowRoot"
            ".getElementById('send').textContent === 'Invia'")
        assert await send.inner_text() == "Invia"
        assert await page.locator("#storedesk-widget >> #text").get_attribute(
            "placeholder") == "Scrivi il tuo messaggio"


async def test_a_page_on_an_origin_not_listed_is_refused(browser: Any,
                                                         make_settings: Any) -> None:
    async with store_site_placeholder() as holder, support_service(make_settings,
                               webchat_allowed_origins="https://shop.example") as service:
        holder.support = f"http://127.0.0.1:{service.port}"
        page = await browser.new_page()
        await page.goto(holder.origin + "/")
        status = await page.evaluate(
            """async (base) => {
                    const r = await fetch(base + '/api/webchat/messages', {method: 'POST',
                      headers: {'Content-Type': 'application/json'},
                      body: JSON.stringify({text: 'hello'})}).catch(() => null);
                    return r === null ? 'blocked' : r.status; }""", holder.support)
        assert status == "blocked"  # no CORS answer: the browser withholds it
        async with service.db.read() as conn:
            count = await conn.scalar(select(func.count()).select_from(Message))
        assert count == 0


class _Holder:
    origin = ""
    support = ""


@asynccontextmanager
async def store_site_placeholder(lang: str = "en") -> AsyncIterator[_Holder]:
    """The store site, bound before the support service so its origin can be listed; it
    renders the script tag with whatever support address is set on the holder."""
    holder = _Holder()

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=STORE_PAGE.format(support=holder.support, lang=lang),
                            content_type="text/html")
    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    holder.origin = f"http://127.0.0.1:{port}"
    try:
        yield holder
    finally:
        await runner.cleanup()


async def test_a_message_sent_while_the_network_is_cut_arrives_once_when_it_returns(
        browser: Any, make_settings: Any) -> None:
    async with store_site_placeholder() as holder, support_service(
            make_settings, webchat_allowed_origins=holder.origin) as service:
        holder.support = f"http://127.0.0.1:{service.port}"
        page = await browser.new_page()
        await page.goto(holder.origin + "/")
        aborted: list[str] = []

        async def cut(route: Any) -> None:
            if route.request.method == "POST":
                aborted.append(route.request.url)
                await route.abort("internetdisconnected")
            else:
                await route.continue_()
        await page.route(holder.support + "/api/webchat/messages*", cut)
        await _open_and_ask(page, "How long does delivery take?")
        pending = page.locator("#storedesk-widget >> li.pending")
        await pending.wait_for(timeout=5_000)
        assert "sending…" in await pending.inner_text()
        while len(aborted) < 2:  # tried, and retried with the network still down
            await page.wait_for_timeout(100)
        await page.unroute(holder.support + "/api/webchat/messages*")
        answer = page.locator("#storedesk-widget >> li.them:not(#welcome)")
        await answer.first.wait_for(timeout=15_000)
        await pending.wait_for(state="detached", timeout=5_000)
        async with service.db.read() as conn:
            inbound = await conn.scalar(select(func.count()).select_from(Message)
                                        .where(Message.direction == "in"))
        assert inbound == 1
        assert await page.locator("#storedesk-widget >> li.you").count() == 1
        await page.screenshot(path=str(DOCS / "widget-desktop.png"))


async def test_on_a_phone_the_panel_fills_the_screen(browser: Any, make_settings: Any) -> None:
    async with store_site_placeholder(lang="th") as holder, support_service(
            make_settings, webchat_allowed_origins=holder.origin) as service:
        holder.support = f"http://127.0.0.1:{service.port}"
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        await page.goto(holder.origin + "/")
        await page.click("#storedesk-widget >> #launch")
        panel = page.locator("#storedesk-widget >> #panel")
        await panel.wait_for()
        box = await panel.bounding_box()
        assert box is not None and box["width"] == 390 and box["height"] == 844
        assert await page.locator("#storedesk-widget >> #send").inner_text() == "ส่ง"
        await page.screenshot(path=str(DOCS / "widget-phone.png"))


async def test_a_staff_reply_shows_a_badge_while_closed_and_in_the_open_panel(
        browser: Any, make_settings: Any) -> None:
    async with fake_slack() as slack, store_site_placeholder() as holder, support_service(
            make_settings, webchat_allowed_origins=holder.origin,
            **slack_settings(slack, slack_staff_channel="CSTAFF")) as service:
        holder.support = f"http://127.0.0.1:{service.port}"
        page = await browser.new_page()
        await page.goto(holder.origin + "/")
        await _open_and_ask(page, "I want to talk to a person please")
        them = page.locator("#storedesk-widget >> li.them:not(#welcome)")
        await them.first.wait_for(timeout=10_000)
        card = await _card(slack)
        await page.click("#storedesk-widget >> #close")
        assert await staff_reply(service, card, "Hi, Sam here. How can I help?", ts="5.1") == 200
        badge = page.locator("#storedesk-widget >> #badge")
        await badge.wait_for(state="visible", timeout=10_000)
        assert await badge.inner_text() == "1"
        await page.click("#storedesk-widget >> #launch")
        await badge.wait_for(state="hidden")
        assert "Sam here" in await them.last.inner_text()
        assert await staff_reply(service, card, "Your parcel left today.", ts="5.2") == 200
        await page.locator("#storedesk-widget >> li.them", has_text="parcel left").wait_for(
            timeout=10_000)
        assert await badge.is_hidden()


async def _card(slack: Any) -> str:
    for _ in range(200):
        cards = [c for c in slack.posts("CSTAFF") if "thread_ts" not in c.params]
        if cards:
            return str(cards[0].result["ts"])
        await asyncio.sleep(0.05)
    raise AssertionError("no card reached the staff channel")


async def staff_reply(service: Service, card_ts: str, text: str, *, ts: str) -> int:
    event = {"channel": "CSTAFF", "channel_type": "channel", "user": "USTAFF", "text": text,
             "ts": ts, "thread_ts": card_ts}
    return await send_event(service, event, event_id=f"Ev{ts}")


async def test_axe_core_finds_no_serious_violations(browser: Any, make_settings: Any) -> None:
    if not AXE.exists():
        pytest.skip(f"axe-core is not installed at {AXE} (bash .ci/system-deps installs it)")
    async with store_site_placeholder() as holder, support_service(
            make_settings, webchat_allowed_origins=holder.origin) as service:
        holder.support = f"http://127.0.0.1:{service.port}"
        page = await browser.new_page()
        await page.goto(holder.origin + "/")
        await _open_and_ask(page, "How long does delivery take?")
        await page.locator("#storedesk-widget >> li.them:not(#welcome)").first.wait_for(
            timeout=10_000)
        await page.add_script_tag(content=AXE.read_text())
        result = await page.evaluate(
            "axe.run(document.getElementById('storedesk-widget'))"
            ".then(r => r.violations.map(v => ({id: v.id, impact: v.impact})))")
        serious = [v for v in result if v["impact"] in ("serious", "critical")]
        assert serious == []


def test_an_allowed_origin_that_is_not_an_origin_stops_the_start(make_settings: Any) -> None:
    with pytest.raises(ConfigError, match="WEBCHAT_ALLOWED_ORIGINS"):
        make_settings(webchat_allowed_origins="https://shop.example, shop.example/path")

"""The dashboard in a real browser (Debian chromium via Playwright) on seeded demo data.

Signs in, checks every chart was drawn with data points (read from the Chart.js objects),
filters the conversation list, opens a conversation, downloads the FAQ suggestions, and saves
a screenshot to test-artifacts/dashboard.png.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from bench.seed import seed_demo
from bot.app import Service
from bot.db.engine import Database
from faq.loader import load_faq_dir
from tests.conftest import ADMIN_TOKEN, ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
CHARTS = ("customers", "conversations", "flow", "csat", "botshare", "response", "reasons", "faq")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason="Debian chromium is missing: apt-get install -y chromium")]

playwright_api = pytest.importorskip("playwright.async_api",
                                     reason="Playwright for Python is not installed")


@pytest.fixture
async def demo_service(make_settings) -> AsyncIterator[Service]:
    settings = make_settings()
    db = Database(settings.database_url)
    try:
        await db.upgrade()
        await seed_demo(db, load_faq_dir(settings.faq_dir), messages=4000, days=40, seed=3)
    finally:
        await db.close()
    service = Service(settings)
    await service.start(workers=False)
    try:
        yield service
    finally:
        await service.stop()


async def chart_points(page) -> dict[str, int]:
    return await page.evaluate("""() => Object.fromEntries(Object.entries(window.storedeskCharts)
        .map(([name, chart]) => [name, chart.data.datasets.reduce((n, ds) =>
            n + ds.data.filter(v => typeof v === 'number' && v > 0).length, 0)]))""")


async def loaded(page) -> None:
    await page.wait_for_function("document.body.dataset.loaded === '1'", timeout=20_000)


async def test_dashboard_in_chromium(demo_service: Service, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{demo_service.port}"
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1400, "height": 1000},
                                                accept_downloads=True)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            await page.goto(f"{base}/dashboard")
            assert page.url.endswith("/dashboard/login")
            await page.fill("input[name=token]", ADMIN_TOKEN)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/dashboard")
            await page.click("text=30 days")
            await loaded(page)

            points = await chart_points(page)
            assert set(points) == set(CHARTS)
            assert all(points[name] > 0 for name in CHARTS), points
            labels = await page.evaluate("window.storedeskCharts.customers.data.labels.length")
            assert labels == 31
            assert await page.locator("#performance-table tbody tr").count() >= 3
            assert await page.locator("#gaps-table tbody tr").count() >= 1

            artifacts = ROOT / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            await page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)

            # by channel: one bar per channel the demo used
            await page.click("text=by channel")
            await loaded(page)
            keys = await page.evaluate("window.storedeskCharts.botshare.data.labels")
            assert set(keys) <= {"webchat", "whatsapp", "email", "telegram", "slack"}
            assert len(keys) >= 3

            # filter the conversation list
            total_text = await page.text_content("#conv-count")
            await page.select_option("#filters select[name=stage]", "purchase")
            await loaded(page)
            stages = await page.locator("#conversations-table tbody tr td:nth-child(6)") \
                .all_text_contents()
            assert stages and set(stages) == {"purchase"}
            assert await page.text_content("#conv-count") != total_text

            # open a conversation
            await page.locator("#conversations-table tbody tr").first.click()
            await page.wait_for_selector("#transcript .msg")
            assert await page.locator("#transcript .msg").count() >= 2
            history = await page.locator("#stage-history li").all_text_contents()
            assert any("purchase" in h for h in history)

            # download the FAQ suggestions
            async with page.expect_download() as info:
                await page.click("#download-yaml")
            download = await info.value
            target = tmp_path / "suggestions.yaml"
            await download.save_as(str(target))
            entries = yaml.safe_load(target.read_text(encoding="utf-8"))
            assert entries and all(e["questions"] and e["answer"] for e in entries)
            assert not errors, errors
        finally:
            await browser.close()

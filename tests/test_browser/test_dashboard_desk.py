"""The desk without Slack, in a real browser: a waiting web chat customer is answered from the
dashboard and sees the reply; a note written there never reaches them. Also renders the Slack
card's Block Kit to HTML for the screenshots in docs/slack-desk.md (written to test-artifacts/,
and to docs/ with STOREDESK_UPDATE_DOCS=1)."""

from __future__ import annotations

import html
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.app import Service
from bot.desk import cards
from tests.conftest import ADMIN_TOKEN, eventually, stays
from tests.test_browser.conftest import ARTIFACTS

pytestmark = pytest.mark.browser
DOCS = Path(__file__).resolve().parents[2] / "docs"
NAMES = {"U123ANNA": "anna"}  # how Slack shows a mention


def _save(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def _publish(path: Path) -> None:
    if os.environ.get("STOREDESK_UPDATE_DOCS") == "1":
        shutil.copy(path, DOCS / path.name)


async def test_a_waiting_customer_is_answered_from_the_dashboard_and_never_sees_the_note(
        browser: Any, make_settings: Any) -> None:
    service = Service(make_settings(desk_in_dashboard=True))
    await service.start()
    try:
        await _answer_from_the_dashboard(browser, service)
    finally:
        await service.stop()


async def _answer_from_the_dashboard(browser: Any, service: Service) -> None:
    base = f"http://127.0.0.1:{service.port}"
    shopper = await (await browser.new_context()).new_page()
    await shopper.goto(f"{base}/")
    await shopper.fill("#text", "Voglio parlare con una persona per favore")
    await shopper.click("#send")
    await shopper.locator(".msg.bot").first.wait_for(timeout=10_000)

    staff = await (await browser.new_context(viewport={"width": 1400, "height": 1000})).new_page()
    errors: list[str] = []
    staff.on("pageerror", lambda exc: errors.append(str(exc)))
    await staff.goto(f"{base}/dashboard/login")
    await staff.fill("input[name=token]", ADMIN_TOKEN)
    await staff.click("button[type=submit]")
    await staff.wait_for_url(f"{base}/dashboard")
    await staff.locator("#waiting-count").wait_for(timeout=10_000)
    assert "1 waiting now" in await staff.locator("#waiting").inner_text()
    await staff.click("#open-oldest")
    await staff.locator("#desk").wait_for()

    await staff.fill("#staff-name", "Anna")
    await staff.fill("#desk-text", "Nota interna: rimborso già chiesto al magazzino")
    await staff.click("#desk-note")
    await staff.locator("#transcript .msg.note").wait_for(timeout=10_000)
    await staff.fill("#desk-text", "Ciao, sono Anna: ti aiuto io.")
    await staff.click("#desk-send")
    await staff.locator("#transcript .msg.staff").wait_for(timeout=10_000)
    assert "with Anna" in await staff.locator("#desk h3").inner_text()

    await shopper.get_by_text("Ciao, sono Anna: ti aiuto io.").wait_for(timeout=10_000)

    async def no_note() -> bool:
        return "rimborso" not in await shopper.locator("body").inner_text()
    await stays(no_note, window=1.0, what="the note stays off the customer's page")

    await staff.locator("#panel-conversations").scroll_into_view_if_needed()
    path = _save("dashboard-desk.png")
    await staff.screenshot(path=str(path), full_page=False)
    _publish(path)
    await staff.click("#desk button[data-action=resolve]")
    await eventually(lambda: _waiting_none(staff), what="nobody waiting after resolve")
    assert not errors, errors


async def _waiting_none(page: Any) -> bool:
    await page.evaluate("loadWaiting()")
    return "Nobody is waiting" in await page.locator("#waiting").inner_text()


# --- the Slack card, rendered -------------------------------------------------------------

def _mrkdwn(text: str) -> str:
    """Enough of Slack's mrkdwn for a faithful picture: bold, quotes, code, line breaks."""
    out = []
    for line in text.split("\n"):
        quoted = line.startswith("> ") or line.startswith("&gt; ")
        line = line.removeprefix("> ").removeprefix("&gt; ")
        line = re.sub(r"<@(\w+)>", lambda m: "@" + NAMES.get(m.group(1), m.group(1)), line)
        safe = html.escape(html.unescape(line))
        parts = safe.split("*")
        safe = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
        parts = safe.split("`")
        safe = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
        out.append(f'<div class="quote">{safe}</div>' if quoted else f"<div>{safe}</div>")
    return "".join(out)


def render_blocks(blocks: list[dict[str, Any]]) -> str:
    rows = []
    for b in blocks:
        if b["type"] == "section" and "text" in b:
            rows.append(f'<div class="section">{_mrkdwn(b["text"]["text"])}</div>')
        elif b["type"] == "section":
            rows.append('<div class="fields">' + "".join(
                f"<div>{_mrkdwn(f['text'])}</div>" for f in b["fields"]) + "</div>")
        elif b["type"] == "context":
            rows.append('<div class="context">' + "".join(
                _mrkdwn(e["text"]) for e in b["elements"]) + "</div>")
        elif b["type"] == "actions":
            items = []
            for e in b["elements"]:
                label = e.get("text", e.get("placeholder", {})).get("text", "")
                kind = "menu" if e["type"] != "button" else e.get("style", "plain")
                items.append(f'<span class="btn {kind}">{html.escape(label)}'
                             f'{" ▾" if kind == "menu" else ""}</span>')
            rows.append(f'<div class="actions">{"".join(items)}</div>')
    return "".join(rows)


PAGE = """<!doctype html><html><head><meta charset="utf-8"><style>
body {{ font: 15px/1.45 -apple-system, "Segoe UI", "Noto Sans Thai", Lato, sans-serif;
  margin: 0; padding: 16px; background: #fff; color: #1d1c1d; width: 720px; }}
.msg {{ display: grid; grid-template-columns: 40px 1fr; gap: 8px; margin-bottom: 22px; }}
.avatar {{ width: 36px; height: 36px; border-radius: 6px; background: #4a154b; }}
.name {{ font-weight: 700; }} .name small {{ color: #616061; font-weight: 400; }}
.section, .fields, .context, .actions {{ margin: 6px 0; }}
.fields {{ display: grid; grid-template-columns: 1fr 1fr; gap: 6px; }}
.context {{ color: #616061; font-size: 13px; }}
.quote {{ border-left: 4px solid #ddd; padding-left: 8px; }}
code {{ background: #f6f6f6; border: 1px solid #e8e8e8; padding: 0 3px; border-radius: 3px; }}
.actions {{ display: flex; flex-wrap: wrap; gap: 8px; }}
.btn {{ border: 1px solid #bbb; border-radius: 4px; padding: 3px 12px; font-weight: 700;
  font-size: 14px; }}
.btn.primary {{ background: #007a5a; color: #fff; border-color: #007a5a; }}
.btn.menu {{ font-weight: 400; }}
</style></head><body>{cards}</body></html>"""


def _card(**extra: Any) -> str:
    now = datetime(2026, 12, 4, 15, 30, tzinfo=UTC)
    base: dict[str, Any] = dict(
        escalation_id=41, status="open", reason="no_match", customer="Giulia Bianchi",
        channel="whatsapp", language="it", stage="at_risk", team="Italia",
        created_at=now - timedelta(minutes=14), now=now, email="giulia@example.com",
        phone="+39 333 123 4567", orders_count=3, total_spent=212.4, currency="EUR",
        last_order=("#1043", "fulfilled", now - timedelta(days=6)),
        last_inbound_at=now - timedelta(minutes=14),
        messages=[cards.CardMessage("customer", "Il pacco è arrivato rotto, due tazze in pezzi"),
                  cards.CardMessage("bot", "Mi dispiace! Ho passato la conversazione al team: "
                                           "una persona ti risponde qui."),
                  cards.CardMessage("customer", "Ok, aspetto", 1)],
        candidates=[("damaged_item", "My order arrived damaged", 0.31)],
        answer_options=[("damaged_item", "damaged_item: My order arrived damaged")])
    base.update(extra)
    _, blocks = cards.card(cards.CardData(**base))
    return render_blocks(blocks)


async def test_cards_rendered_for_the_docs(browser: Any) -> None:
    now = datetime(2026, 12, 4, 15, 30, tzinfo=UTC)
    waiting = _card()
    taken = _card(escalation_id=42, status="taken", taken_by="U123ANNA",
                  taken_at=now - timedelta(minutes=9), first_response_at=now - timedelta(minutes=9),
                  channel="whatsapp", last_inbound_at=now - timedelta(hours=26), held=1,
                  customer="Somchai P.", language="th", stage="purchase", team="Thailand",
                  messages=[cards.CardMessage("customer", "พัสดุของฉันอยู่ที่ไหนคะ"),
                            cards.CardMessage("staff:U123ANNA", "ขอเช็คให้นะคะ")])
    body = "".join(
        f'<div class="msg"><div class="avatar"></div><div><div class="name">storedesk '
        f'<small>APP 15:30</small></div>{card}</div></div>' for card in (waiting, taken))
    page = await browser.new_page(viewport={"width": 760, "height": 900})
    await page.set_content(PAGE.format(cards=body))
    text = await page.locator("body").inner_text()
    for seen in ("Giulia Bianchi", "giulia@example.com", "3 orders", "Last messages",
                 "Il pacco è arrivato rotto", "Take", "Send FAQ answer", "Snooze",
                 "Assign to", "Release", "Waiting for the customer to reopen", "พัสดุของฉัน"):
        assert seen in text, seen
    path = _save("slack-card.png")
    await page.screenshot(path=str(path), full_page=True)
    _publish(path)

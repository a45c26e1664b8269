"""The dashboard over HTTP: sign-in, session cookie, JSON/CSV API fed by real chats."""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime

import aiohttp
import pytest
import yaml

from bot.admin.auth import SESSION_COOKIE, make_session, session_valid
from bot.app import Service
from tests.conftest import ADMIN_TOKEN, chat


async def sign_in(client: aiohttp.ClientSession,
                  token: str = ADMIN_TOKEN) -> aiohttp.ClientResponse:
    return await client.post("/dashboard/login", data={"token": token}, allow_redirects=False)


async def session_cookie(client: aiohttp.ClientSession) -> dict[str, str]:
    resp = await sign_in(client)
    assert resp.status == 303
    return {"Cookie": f"{SESSION_COOKIE}={resp.cookies[SESSION_COOKIE].value}"}


async def test_everything_needs_a_sign_in(client: aiohttp.ClientSession) -> None:
    resp = await client.get("/dashboard", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard/login"
    for path in ("/api/dashboard/stages", "/api/dashboard/flow", "/api/dashboard/performance",
                 "/api/dashboard/faq", "/api/dashboard/faq/suggestions.yaml",
                 "/api/conversations", "/api/dashboard/conversations/1"):
        resp = await client.get(path)
        assert resp.status == 401, path
        assert "sign in" in (await resp.json())["error"]
    login = await client.get("/dashboard/login")
    assert login.status == 200 and 'name="token"' in await login.text()


async def test_one_sign_in_for_the_admin_api_and_the_dashboard(
        client: aiohttp.ClientSession) -> None:
    """`require_admin` guards both: a dashboard session opens the admin API too, and the
    token itself in a cookie (of any name) opens nothing."""
    headers = await session_cookie(client)
    for path in ("/api/escalations", "/api/queue", "/api/dashboard/stages"):
        assert (await client.get(path, headers=headers)).status == 200, path
    for cookie in (f"storedesk_admin={ADMIN_TOKEN}", f"{SESSION_COOKIE}={ADMIN_TOKEN}"):
        resp = await client.get("/api/escalations", headers={"Cookie": cookie})
        assert resp.status == 401, cookie


async def test_sign_in_gives_a_signed_session_not_the_token(
        client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    wrong = await sign_in(client, "not-the-token-at-all-123")
    assert wrong.status == 401 and SESSION_COOKIE not in wrong.cookies
    assert "not the admin token" in await wrong.text()

    resp = await sign_in(client)
    assert resp.status == 303 and resp.headers["Location"] == "/dashboard"
    morsel = resp.cookies[SESSION_COOKIE]
    assert ADMIN_TOKEN not in morsel.value
    assert morsel["httponly"] and morsel["samesite"] == "Strict"
    headers = {"Cookie": f"{SESSION_COOKIE}={morsel.value}"}
    page = await client.get("/dashboard", headers=headers)
    assert page.status == 200 and "chart-customers" in await page.text()
    assert (await client.get("/api/dashboard/stages", headers=headers)).status == 200

    forged = morsel.value[:-4] + ("0000" if not morsel.value.endswith("0000") else "1111")
    resp = await client.get("/api/dashboard/stages",
                            headers={"Cookie": f"{SESSION_COOKIE}={forged}"})
    assert resp.status == 401
    # the raw token in a cookie is not a session
    resp = await client.get("/api/dashboard/stages",
                            headers={"Cookie": f"{SESSION_COOKIE}={ADMIN_TOKEN}"})
    assert resp.status == 401

    out = await client.post("/dashboard/logout", headers=headers, allow_redirects=False)
    assert out.status == 303 and out.cookies[SESSION_COOKIE].value == ""
    assert ADMIN_TOKEN not in caplog.text


def test_sessions_expire_and_are_tied_to_the_token() -> None:
    value = make_session("a" * 20, now=1000.0)
    assert session_valid(value, "a" * 20, now=1001.0)
    assert not session_valid(value, "b" * 20, now=1001.0)
    assert not session_valid(value, "a" * 20, now=1000.0 + 13 * 3600)
    assert not session_valid("garbage", "a" * 20)


async def test_bearer_token_works_for_scripts(client: aiohttp.ClientSession,
                                              admin_headers: dict[str, str]) -> None:
    resp = await client.get("/api/dashboard/flow", headers=admin_headers)
    assert resp.status == 200 and (await resp.json())["flows"] == []


async def test_metrics_follow_real_chats(service: Service, client: aiohttp.ClientSession) -> None:
    headers = await session_cookie(client)
    question = "How much does shipping cost?"
    expected_id = service.faq.matcher.match(question, "en").faq_id
    assert expected_id is not None
    _, reply = await chat(client, question)
    _, escalated = await chat(client, "Do you repair vintage typewriters from 1950?")

    async def get(path: str) -> dict:
        resp = await client.get(path, headers=headers)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    faq = await get("/api/dashboard/faq?period=7d")
    hits = {e["id"]: e["hits"] for e in faq["entries"]}
    assert hits[expected_id] == 1 and faq["answered"] == 1
    assert sum(hits.values()) == 1
    assert expected_id not in faq["never_hit"]
    assert len(faq["never_hit"]) == len([e for e in service.faq.entries if not e.escalate]) - 1
    assert faq["unanswered"]["questions"] == 1
    assert "typewriters" in faq["unanswered"]["groups"][0]["representative"]

    perf = await get("/api/dashboard/performance?period=7d&by=channel")
    assert [(r["key"], r["messages"], r["answered_by_bot"], r["escalations"])
            for r in perf["rows"]] == [("webchat", 2, 1, 1)]
    assert perf["total"]["reasons"] == {"no_match": 1}

    stages = await get("/api/dashboard/stages?period=7d")
    assert sum(sum(s["counts"]) for s in stages["conversations"]) == 2
    assert len(stages["labels"]) >= 1 and all(len(s["counts"]) == len(stages["labels"])
                                              for s in stages["customers"])

    listing = await get("/api/conversations?channel=webchat&period=7d")
    assert listing["total"] == 2
    assert (await get("/api/conversations?channel=email"))["total"] == 0
    first = listing["conversations"][-1]
    detail = await get(f"/api/dashboard/conversations/{first['id']}")
    assert detail["messages"][0]["text"] == question
    assert detail["messages"][1]["text"] == reply["text"]

    resp = await client.get("/api/dashboard/faq/suggestions.yaml?period=7d", headers=headers)
    assert resp.status == 200
    assert "faq-suggestions.yaml" in resp.headers["Content-Disposition"]
    entries = yaml.safe_load(await resp.text())
    assert entries[0]["questions"] == ["Do you repair vintage typewriters from 1950?"]
    assert escalated["text"]


async def test_csv_exports(client: aiohttp.ClientSession, admin_headers: dict[str, str]) -> None:
    await chat(client, "=HYPERLINK(\"http://evil\") shipping cost?")
    resp = await client.get("/api/conversations?format=csv", headers=admin_headers)
    assert resp.status == 200 and resp.content_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert len(rows) == 1 and rows[0]["channel"] == "webchat"
    assert rows[0]["last_message"].startswith("'=HYPERLINK")  # no formula in a spreadsheet
    resp = await client.get("/api/dashboard/performance?period=7d&format=csv",
                            headers=admin_headers)
    table = list(csv.reader(io.StringIO(await resp.text())))
    assert table[0][:4] == ["key", "messages", "answered_by_bot", "bot_share"]
    assert table[-1][0] == "all" and table[-1][1] == "1"
    for path in ("/api/dashboard/stages", "/api/dashboard/flow", "/api/dashboard/faq"):
        resp = await client.get(f"{path}?format=csv", headers=admin_headers)
        assert resp.status == 200 and resp.content_type == "text/csv", path


@pytest.mark.parametrize("query", [
    "/api/dashboard/stages?period=yesterday", "/api/dashboard/stages?period=custom",
    "/api/dashboard/stages?period=custom&from=2026-03-10&to=2026-03-01",
    "/api/dashboard/stages?period=custom&from=2020-01-01&to=2026-01-01",
    "/api/dashboard/flow?period=custom&from=notadate",
    "/api/dashboard/performance?by=weather", "/api/conversations?limit=0",
    "/api/conversations?offset=-1", "/api/conversations?limit=ten",
    "/api/dashboard/faq?format=xml",
])
async def test_bad_parameters_are_400(client: aiohttp.ClientSession,
                                      admin_headers: dict[str, str], query: str) -> None:
    resp = await client.get(query, headers=admin_headers)
    assert resp.status == 400
    assert (await resp.json())["error"]


async def test_custom_period_and_missing_conversation(
        client: aiohttp.ClientSession, admin_headers: dict[str, str]) -> None:
    resp = await client.get("/api/dashboard/stages?period=custom&from=2026-03-01&to=2026-03-03",
                            headers=admin_headers)
    data = await resp.json()
    assert data["labels"] == ["2026-03-01", "2026-03-02", "2026-03-03"]
    resp = await client.get("/api/dashboard/conversations/999999", headers=admin_headers)
    assert resp.status == 404


async def test_dashboard_off_without_admin_token(make_settings) -> None:
    service = Service(make_settings(admin_token=None))
    await service.start(workers=False)
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
            assert (await client.get("/dashboard/login")).status == 403
            assert (await client.get("/api/dashboard/stages")).status == 403
    finally:
        await service.stop()


async def test_sign_in_attempts_are_rate_limited(client: aiohttp.ClientSession) -> None:
    statuses = [(await sign_in(client, f"wrong-token-{i:04d}-xxxxxxxx")).status
                for i in range(8)]
    assert statuses[0] == 401 and statuses[-1] == 429
    resp = await sign_in(client)
    assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1


async def test_preset_periods_are_served_from_the_background_cache(make_settings) -> None:
    service = Service(make_settings(dashboard_cache_seconds=60))
    await service.start()
    try:
        async with aiohttp.ClientSession(base_url=f"http://127.0.0.1:{service.port}") as client:
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

            async def get(path: str) -> dict:
                async with client.get(path, headers=headers) as resp:
                    assert resp.status == 200
                    return await resp.json()

            first = await get("/api/dashboard/performance?period=7d")
            assert first["total"]["messages"] == 0
            await chat(client, "How much does shipping cost?")
            cached = await get("/api/dashboard/performance?period=7d")
            assert cached["as_of"] == first["as_of"] and cached["total"]["messages"] == 0
            today = datetime.now(UTC).date().isoformat()
            live = await get(f"/api/dashboard/performance?period=custom&from={today}&to={today}")
            assert live["total"]["messages"] == 1
            assert (await get("/api/dashboard/performance?period=30d"))["total"]["messages"] == 1
    finally:
        await service.stop()

"""`python bench/seed.py`: a realistic synthetic support history, so the dashboard lives at once.

Customers arrive over the last `days` days on every channel, in en/it/th, and move through the
lifecycle (awareness -> consideration -> purchase -> retention -> advocacy, some into at_risk).
They ask the questions of the loaded FAQ (its real ids and phrasings); some questions have no
FAQ entry and are escalated as "no_match" (grouped themes, so FAQ suggestions have something to
find); staff answer escalations with channel- and stage-dependent delays and get CSAT scores.

Rows are generated in memory in chunks and bulk-inserted (executemany; COPY on PostgreSQL), with
ids assigned here, so a million messages take minutes, not hours. It only adds rows: ids start
after the current maximum, and nothing existing is touched.

Demo and bench data, not the service's: the runtime package (`bot`) never imports it. It reads
DATABASE_URL and FAQ_DIR like the service; `bench/dashboard_api.py` and `bench/loop_blocking.py`
call `seed_demo` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bot.admin import rollups  # noqa: E402
from bot.db.engine import Database  # noqa: E402
from bot.db.models import (  # noqa: E402
    Conversation,
    Customer,
    Escalation,
    Identity,
    Message,
    Order,
    StageChange,
)
from faq.language import detect_language  # noqa: E402
from faq.matcher import Matcher  # noqa: E402
from faq.models import FaqEntry  # noqa: E402

TABLES: dict[str, Table] = {
    t.name: t for t in (getattr(m, "__table__") for m in (  # noqa: B009 - SQLModel typing
        Customer, Identity, Conversation, Message, StageChange, Escalation, Order))}
INSERT_ORDER = ("customer", "identity", "conversation", "message", "stage_change", "escalation",
                "orders")
CHANNELS = (("webchat", 0.32), ("whatsapp", 0.27), ("email", 0.2), ("telegram", 0.15),
            ("slack", 0.06))
LANGUAGES = (("en", 0.5), ("it", 0.32), ("th", 0.18))
# median minutes until a person first answers an escalation, per channel
FIRST_RESPONSE_MIN = {"webchat": 6, "whatsapp": 14, "email": 95, "telegram": 18, "slack": 9}
STAFF = ("Alice Rossi", "Marco Bianchi", "Somchai K.", "Giulia Verdi", "Nok Srisuk")
REASONS = {  # the reasons bot/data/lifecycle.yaml gives
    "awareness": "first contact",
    "consideration": "comparing products, sizes or payment options",
    "purchase": "question about buying or paying",
    "retention": "placed an order",
    "advocacy": "customer offers to review or recommend",
    "at_risk": "complaint or churn words",
}
NEXT_STAGE = {"awareness": ("consideration", 0.72), "consideration": ("purchase", 0.6),
              "purchase": ("retention", 0.75), "retention": ("advocacy", 0.22)}
ESCALATE_P = {"awareness": 0.1, "consideration": 0.14, "purchase": 0.2, "retention": 0.22,
              "advocacy": 0.08, "at_risk": 0.65}
# Questions the sample FAQ cannot answer: each theme is asked in a few ways per language.
MISSING = {
    "click and collect": {
        "en": ["Can I pick up my order in store?", "is click and collect available?",
               "can I collect the parcel at your shop"],
        "it": ["Posso ritirare l'ordine in negozio?", "si può ritirare il pacco al negozio?"],
        "th": ["ไปรับสินค้าที่ร้านได้ไหม", "มีบริการรับของที่ร้านไหม"]},
    "engraving": {
        "en": ["Can you engrave a name on the bracelet?", "do you do custom engraving",
               "engraving on the watch possible?"],
        "it": ["Potete incidere un nome sul bracciale?", "fate incisioni personalizzate?"],
        "th": ["สลักชื่อบนสร้อยข้อมือได้ไหม", "รับสลักชื่อไหม"]},
    "wholesale": {
        "en": ["Do you sell wholesale to shops?", "wholesale prices for 200 pieces?"],
        "it": ["Vendete all'ingrosso ai negozi?", "prezzi all'ingrosso per 200 pezzi?"],
        "th": ["ขายส่งให้ร้านค้าไหม", "ราคาขายส่ง 200 ชิ้น"]},
    "student discount": {
        "en": ["Is there a student discount?", "do students get a discount"],
        "it": ["C'è uno sconto per studenti?", "gli studenti hanno lo sconto?"],
        "th": ["มีส่วนลดนักศึกษาไหม", "นักเรียนได้ส่วนลดไหม"]},
    "jobs": {
        "en": ["Are you hiring? I would like to work for you", "how can I apply for a job"],
        "it": ["State assumendo? Vorrei lavorare con voi", "come mi candido per un lavoro"],
        "th": ["รับสมัครงานไหม", "สมัครงานได้ที่ไหน"]},
}
COMPLAINTS = {"en": ["This is unacceptable, my order is late again", "Terrible service, I am "
                     "disappointed"],
              "it": ["Servizio pessimo, sono deluso", "È inaccettabile, ordine in ritardo"],
              "th": ["บริการแย่มาก ผิดหวังมาก", "ผิดหวังกับการจัดส่ง"]}
HUMAN = {"en": "Can I talk to a person please?", "it": "Posso parlare con un operatore?",
         "th": "ขอคุยกับพนักงานหน่อย"}
STAFF_REPLY = {"en": "Hi, this is {name} from the team: I have checked and sorted it for you.",
               "it": "Ciao, sono {name} del team: ho verificato e risolto.",
               "th": "สวัสดีค่ะ {name} จากทีมงาน ตรวจสอบและแก้ไขให้แล้วค่ะ"}
FALLBACK = {"en": "Thanks, a colleague will answer you here shortly.",
            "it": "Grazie, un collega ti risponderà qui a breve.",
            "th": "ขอบคุณค่ะ เจ้าหน้าที่จะตอบกลับที่นี่เร็วๆ นี้"}


@dataclass(slots=True)
class SeedStats:
    customers: int = 0
    conversations: int = 0
    messages: int = 0
    escalations: int = 0
    stage_changes: int = 0
    orders: int = 0
    seconds: float = 0.0


@dataclass(slots=True)
class _Ids:
    next: dict[str, int] = field(default_factory=dict)

    def take(self, table: str) -> int:
        self.next[table] += 1
        return self.next[table]


def _pick(rng: random.Random, weighted: Sequence[tuple[str, float]]) -> str:
    return rng.choices([w[0] for w in weighted], [w[1] for w in weighted])[0]


def _lognormal_s(rng: random.Random, median_s: float, sigma: float = 0.8) -> float:
    return median_s * math.exp(rng.gauss(0.0, sigma))


class _Phrasebook:
    """FAQ questions and answers per stage and language, from the loaded FAQ."""

    def __init__(self, entries: Sequence[FaqEntry]) -> None:
        self.missing = _unanswerable(entries)
        self.by_stage: dict[str, list[FaqEntry]] = defaultdict(list)
        self.questions: dict[tuple[str, str], list[str]] = defaultdict(list)
        self.answerable = [e for e in entries if not e.escalate]
        for entry in self.answerable:
            self.by_stage[entry.stage or "awareness"].append(entry)
            for q in entry.questions:
                self.questions[(entry.id, detect_language(q, default="en"))].append(q)
        if not self.answerable:
            raise ValueError("the FAQ has no answerable entries to seed questions from")

    def entry(self, rng: random.Random, stage: str) -> FaqEntry:
        pool = self.by_stage.get(stage) or self.answerable
        return rng.choice(pool)

    def question(self, rng: random.Random, entry: FaqEntry, lang: str) -> str:
        options = self.questions.get((entry.id, lang)) or list(entry.questions)
        return rng.choice(options)


def _unanswerable(entries: Sequence[FaqEntry]) -> list[dict[str, list[str]]]:
    """The MISSING themes' phrasings that the real matcher does not answer (the FAQ grows)."""
    matcher = Matcher(entries)
    themes = []
    for theme in MISSING.values():
        kept = {lang: [q for q in qs if matcher.match(q, lang).decision != "answer"]
                for lang, qs in theme.items()}
        fallback = next((qs for qs in kept.values() if qs), None)
        if fallback:  # a language whose phrasings all match asks in another language
            themes.append({lang: qs or fallback for lang, qs in kept.items()})
    return themes or [COMPLAINTS]


class _Generator:
    """Builds rows for whole customer journeys; flushes them in chunks."""

    def __init__(self, book: _Phrasebook, ids: _Ids, *, now: datetime, days: int,
                 rng: random.Random) -> None:
        self.book, self.ids, self.now, self.days, self.rng = book, ids, now, days, rng
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.stats = SeedStats()

    def customer(self) -> None:
        rng = self.rng
        # more customers recently: a growing shop
        start = self.now - timedelta(days=self.days * (1 - math.sqrt(rng.random())))
        lang = _pick(rng, LANGUAGES)
        channel = _pick(rng, CHANNELS)
        cid = self.ids.take("customer")
        address = self._address(channel, cid)
        iid = self.ids.take("identity")
        name = f"{rng.choice(('Anna', 'Luca', 'Ploy', 'Tom', 'Sara', 'Niran', 'Elena'))} {cid}"
        self.rows["identity"].append({"id": iid, "customer_id": cid, "channel": channel,
                                      "address": address, "display_name": name,
                                      "created_at": start})
        at, stage, orders, spent = start, "awareness", 0, 0.0
        last_order: datetime | None = None
        path = ["awareness"]
        while stage in NEXT_STAGE and rng.random() < NEXT_STAGE[stage][1]:
            stage = NEXT_STAGE[stage][0]
            path.append(stage)
        if len(path) > 2 and rng.random() < 0.14:
            path.insert(rng.randint(3, len(path)), "at_risk")
        previous: str | None = None
        for stage in path:
            if at >= self.now:
                break
            self._conversation(cid, iid, channel, address, lang, stage, previous, at)
            if stage in ("purchase", "retention") and at < self.now:
                orders += 1
                total = round(rng.uniform(19, 240), 2)
                spent += total
                last_order = at + timedelta(hours=2)
                self.rows["orders"].append({
                    "id": self.ids.take("orders"), "customer_id": cid,
                    "external_id": f"demo-{cid}-{orders}", "total": total, "currency": "EUR",
                    "status": "fulfilled", "placed_at": min(last_order, self.now)})
                self.stats.orders += 1
            previous = stage
            at += timedelta(days=rng.expovariate(1 / 9))
        self.rows["customer"].append({
            "id": cid, "display_name": name, "email": f"c{cid}@example.com"
            if channel == "email" else None, "phone": address.removeprefix("whatsapp:")
            if channel == "whatsapp" else None, "language": lang, "stage": previous,
            "orders_count": orders, "total_spent": round(spent, 2), "last_order_at": last_order,
            "created_at": start})
        self.stats.customers += 1

    def _address(self, channel: str, cid: int) -> str:
        return {"whatsapp": f"whatsapp:+3933{cid:08d}", "email": f"c{cid}@example.com",
                "telegram": str(100000000 + cid), "slack": f"U{cid:09d}"}.get(
                    channel, f"visitor-{cid:012d}")

    def _conversation(self, cid: int, iid: int, channel: str, address: str, lang: str,
                      stage: str, previous: str | None, at: datetime) -> None:
        rng = self.rng
        conv = self.ids.take("conversation")
        self.stats.conversations += 1
        self._stage_change(conv, cid, stage, at)
        turns = rng.choices((1, 2, 3, 4), (0.35, 0.35, 0.2, 0.1))[0]
        t = at
        escalation: tuple[int, datetime, str] | None = None
        for turn in range(turns):
            t += timedelta(seconds=rng.uniform(20, 600) if turn else 0)
            if t >= self.now:
                break
            if turn == turns - 1 and rng.random() < ESCALATE_P[stage]:
                escalation = self._escalate(conv, channel, lang, stage, t)
                break
            entry = self.book.entry(rng, stage)
            question = self.book.question(rng, entry, lang)
            self._message(conv, channel, "in", "customer", question, lang, t, entry.id,
                          "answer", score=round(rng.uniform(0.72, 0.99), 4))
            answer, used = entry.answer_for(lang)
            self._message(conv, channel, "out", "bot", answer, used,
                          t + timedelta(seconds=rng.uniform(0.4, 2.5)), entry.id, None)
        status = "resolved"
        resolved_at: datetime | None = t + timedelta(hours=1)
        if escalation is not None:
            _, done_at, state = escalation
            status = {"resolved": "resolved", "taken": "human", "open": "waiting"}[state]
            resolved_at = done_at
        if resolved_at is not None and resolved_at >= self.now:
            status, resolved_at = ("bot" if escalation is None else status), None
        self.rows["conversation"].append({
            "id": conv, "customer_id": cid, "identity_id": iid, "channel": channel,
            "address": address, "status": status, "language": lang, "stage": stage,
            "assigned_to": None, "meta": None, "created_at": at, "updated_at": min(t, self.now),
            "last_inbound_at": min(t, self.now), "resolved_at": resolved_at})

    def _stage_change(self, conv: int, cid: int, new: str, at: datetime) -> None:
        # a new conversation starts without a stage (from_stage NULL), as in the handler
        self.rows["stage_change"].append({
            "id": self.ids.take("stage_change"), "conversation_id": conv, "customer_id": cid,
            "from_stage": None, "to_stage": new, "reason": REASONS[new], "created_at": at})
        self.stats.stage_changes += 1

    def _message(self, conv: int, channel: str, direction: str, author: str, body: str,
                 lang: str, at: datetime, faq_id: str | None, decision: str | None,
                 score: float | None = None) -> None:
        self.rows["message"].append({
            "id": self.ids.take("message"), "conversation_id": conv, "direction": direction,
            "channel": channel, "external_id": None, "author": author, "text": body,
            "language": lang, "faq_id": faq_id, "score": score, "decision": decision,
            "status": "received" if direction == "in" else "delivered", "created_at": at,
            "sent_at": None if direction == "in" else at})
        self.stats.messages += 1

    def _escalate(self, conv: int, channel: str, lang: str, stage: str,
                  at: datetime) -> tuple[int, datetime, str]:
        rng = self.rng
        kind = rng.choices(("no_match", "asked_for_human", "ambiguous", "repeated_question"),
                           (0.5, 0.2, 0.18, 0.12))[0]
        faq_id = None
        if stage == "at_risk":
            question = rng.choice(COMPLAINTS[lang])
        elif kind == "no_match":
            question = rng.choice(rng.choice(self.book.missing)[lang])
        elif kind == "asked_for_human":
            question = HUMAN[lang]
        else:
            entry = self.book.entry(rng, stage)
            question, faq_id = self.book.question(rng, entry, lang), entry.id
        self._message(conv, channel, "in", "customer", question, lang, at, faq_id, "escalate",
                      score=round(rng.uniform(0.2, 0.7), 4))
        self._message(conv, channel, "out", "bot", FALLBACK[lang], lang,
                      at + timedelta(seconds=1), None, None)
        median = FIRST_RESPONSE_MIN[channel] * 60 * (0.6 if stage == "at_risk" else 1.0)
        first = at + timedelta(seconds=_lognormal_s(rng, median))
        resolved = first + timedelta(seconds=_lognormal_s(rng, 3600 * 1.5, 1.0))
        staff = rng.choice(STAFF)
        state = "resolved" if resolved < self.now else "taken" if first < self.now else "open"
        csat = None
        if state == "resolved" and rng.random() < 0.7:
            wait_penalty = min(2.5, (first - at).total_seconds() / 3600)
            csat = max(1, min(5, round(rng.gauss(4.7 - wait_penalty, 0.8))))
        eid = self.ids.take("escalation")
        self.rows["escalation"].append({
            "id": eid, "conversation_id": conv, "reason": kind if stage != "at_risk" else
            "no_match" if kind == "no_match" else "asked_for_human", "detail": None,
            "question": question, "candidates": None, "status": state, "team": None,
            "staff_channel": "C0SUPPORT", "staff_thread": f"{at.timestamp():.6f}",
            "taken_by": staff if state != "open" else None,
            "taken_at": first if state != "open" else None,
            "first_response_at": first if state != "open" else None,
            "resolved_at": resolved if state == "resolved" else None, "csat": csat,
            "created_at": at})
        self.stats.escalations += 1
        if state != "open":
            self._message(conv, channel, "out", f"staff:{staff}",
                          STAFF_REPLY[lang].format(name=staff.split()[0]), lang, first, None,
                          None)
        return eid, resolved if state == "resolved" else self.now, state

    def pending(self) -> int:
        return sum(len(v) for v in self.rows.values())


async def _max_ids(conn: AsyncConnection) -> dict[str, int]:
    return {name: int((await conn.execute(select(func.coalesce(func.max(t.c.id), 0))))
                      .scalar_one()) for name, t in TABLES.items()}


async def _flush(db: Database, gen: _Generator) -> None:
    rows, gen.rows = gen.rows, defaultdict(list)
    async with db.write() as conn:
        for name in INSERT_ORDER:
            batch = rows.get(name)
            if not batch:
                continue
            if db.is_sqlite:
                await conn.execute(insert(TABLES[name]), batch)
            else:
                await _copy(conn, TABLES[name], batch)


async def _copy(conn: AsyncConnection, table: Table, batch: list[dict[str, Any]]) -> None:
    """PostgreSQL COPY: an order of magnitude faster than INSERT for bulk rows."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    columns = list(batch[0])
    json_cols = {c.name for c in table.c if c.type.__class__.__name__ == "JSON"}
    records = [tuple(json.dumps(r[c]) if c in json_cols and r[c] is not None else r[c]
                     for c in columns) for r in batch]
    await driver.copy_records_to_table(table.name, records=records, columns=columns)


async def seed_demo(db: Database, entries: Sequence[FaqEntry], *, messages: int = 20_000,
                    days: int = 90, seed: int = 7, now: datetime | None = None,
                    chunk: int = 50_000) -> SeedStats:
    """Add about `messages` messages of synthetic history ending at `now`."""
    started = time.perf_counter()
    rng = random.Random(seed)
    now = now or datetime.now(UTC)
    async with db.read() as conn:
        ids = _Ids(await _max_ids(conn))
    gen = _Generator(_Phrasebook(entries), ids, now=now, days=days, rng=rng)
    while gen.stats.messages < messages:
        gen.customer()
        if gen.pending() >= chunk:
            await _flush(db, gen)
    await _flush(db, gen)
    async with db.write() as conn:
        if not db.is_sqlite:  # ids were given explicitly: move the sequences past them
            for name in TABLES:
                await conn.execute(text(
                    f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), "
                    f"(SELECT COALESCE(MAX(id), 1) FROM {name}))"))
        await conn.execute(text("ANALYZE"))  # fresh statistics for the planner
    if not db.is_sqlite:  # bulk-loaded tables: set the visibility map for index-only scans
        async with db.engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.execute(text("VACUUM ANALYZE"))
    await rollups.refresh(db, rebuild=True)  # the history is new: roll it all up
    gen.stats.seconds = round(time.perf_counter() - started, 1)
    return gen.stats


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fill the database (DATABASE_URL) with a "
                                     "synthetic support history so the dashboard shows data.")
    parser.add_argument("--messages", type=int, default=20_000,
                        help="about how many messages to create")
    parser.add_argument("--days", type=int, default=90, help="days of history, ending now")
    parser.add_argument("--seed", type=int, default=7,
                        help="random seed (same seed, same history)")
    args = parser.parse_args(argv)
    from bot.settings import load_settings
    from faq.loader import load_faq_dir
    settings = load_settings()

    async def run() -> SeedStats:
        db = Database(settings.database_url)
        try:
            await db.upgrade()
            return await seed_demo(db, load_faq_dir(settings.faq_dir), messages=args.messages,
                                   days=args.days, seed=args.seed)
        finally:
            await db.close()

    stats = asyncio.run(run())
    print(f"added {stats.messages} messages, {stats.conversations} conversations, "
          f"{stats.customers} customers, {stats.escalations} escalations, "
          f"{stats.stage_changes} stage changes, {stats.orders} orders in {stats.seconds} s")


if __name__ == "__main__":
    main()

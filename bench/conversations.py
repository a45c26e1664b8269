"""Scripted multi-turn conversations through the web chat API; pass rates per capability.

    python bench/conversations.py                     # starts the service on a temp SQLite
    python bench/conversations.py --url http://127.0.0.1:8080   # a running service
    python bench/conversations.py --script my.yaml --verbose

Each conversation (bench/conversations.yaml) is a new visitor; each turn posts the customer's
text, waits until the service has handled it (the message shows in the transcript, and its
replies are committed with it), and compares the replies with what was expected. A conversation
passes when every turn does. Escalation reasons are read from the database when the service
runs in-process; against --url, "escalated" means the conversation is waiting for a person.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from sqlalchemy import select

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.app import Service  # noqa: E402
from bot.db.models import Escalation  # noqa: E402
from bot.settings import load_settings  # noqa: E402
from core.phrases import variants  # noqa: E402
from faq.loader import load_faq_dir  # noqa: E402
from faq.models import FaqEntry  # noqa: E402

STORE = "Demo Shop"


class Visitor:
    def __init__(self, client: aiohttp.ClientSession) -> None:
        self.client = client
        self.visitor: str | None = None
        self.seen = 0

    async def say(self, text: str, timeout: float = 10.0) -> tuple[list[str], str]:
        """The replies to `text` and the conversation status after it."""
        body: dict[str, Any] = {"text": text}
        if self.visitor:
            body["visitor_id"] = self.visitor
        async with self.client.post("/api/webchat/messages", json=body) as resp:
            if resp.status != 202:
                raise RuntimeError(f"POST answered {resp.status}: {await resp.text()}")
            self.visitor = (await resp.json())["visitor_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with self.client.get("/api/webchat/messages", params={
                    "visitor_id": self.visitor, "after": self.seen, "wait": 2}) as resp:
                messages = (await resp.json())["messages"]
            if any(m["from"] == "you" and m["text"] == text.strip() for m in messages):
                self.seen = max(m["id"] for m in messages)
                return ([m["text"] for m in messages if m["from"] != "you"],
                        str(messages[-1]["conversation_status"]))
        raise TimeoutError(f"{text!r} not handled within {timeout} s")


class Checker:
    def __init__(self, entries: list[FaqEntry], service: Service | None) -> None:
        self.entries = {e.id: e for e in entries}
        self.small_talk = {e.answer_for(lang, "en", {"store_name": STORE})[0]
                           for e in entries if e.kind == "small_talk"
                           for lang in ("en", "it", "th")} | {
            text for k in ("greeting", "thanks", "goodbye", "are_you_bot", "still_here")
            for text in variants(k).values()}
        self.service = service
        self.escalations_seen = 0

    def answer(self, entry_id: str, lang: str) -> str:
        return self.entries[entry_id].answer_for(lang, "en", {"store_name": STORE})[0]

    async def new_escalation(self) -> str | None:
        if self.service is None:
            return None
        async with self.service.db.read() as conn:
            reasons = list((await conn.execute(select(Escalation.reason)
                                               .order_by(Escalation.id))).scalars())
        new = reasons[self.escalations_seen:]
        self.escalations_seen = len(reasons)
        return new[-1] if new else None

    async def check(self, expect: Any, lang: str, replies: list[str], status: str) -> str | None:
        """None when the turn passed, else what went wrong."""
        reason = await self.new_escalation()
        if isinstance(expect, str):
            expect = {expect: True}
        (kind, value), = expect.items()
        if kind == "answer":
            value = [value]
        if kind in ("answer", "answers"):
            wanted = [self.answer(v, lang) for v in value]
            return None if replies == wanted and reason is None else \
                f"wanted {value}, got {replies} (escalation {reason})"
        if kind == "answer_any":
            options = {self.answer(v, lang) for v in value}
            return None if len(replies) == 1 and replies[0] in options and reason is None \
                else f"wanted one of {value}, got {replies} (escalation {reason})"
        if kind == "small_talk":
            ok = reason is None and len(replies) <= 1 and all(r in self.small_talk
                                                              for r in replies)
            return None if ok else f"wanted small talk, got {replies} (escalation {reason})"
        if kind == "silent":
            return None if not replies and reason is None else f"wanted silence, got {replies}"
        if kind == "escalate":
            if self.service is None:
                return None if status == "waiting" else f"not escalated ({status})"
            return None if reason == value else f"wanted escalation {value}, got {reason}"
        if kind in ("queued", "clarify"):
            key = "in_queue" if kind == "queued" else "clarify"
            ok = len(replies) == 1 and reason is None and (
                replies[0] == variants(key).get(lang) or (kind == "queued" and "queue" in
                                                       replies[0].lower()))
            return None if ok else f"wanted {kind}, got {replies} (escalation {reason})"
        raise ValueError(f"unknown expectation {expect!r}")


async def run(conversations: list[dict[str, Any]], script: Path, url: str | None,
              faq_dir: Path, verbose: bool) -> int:
    service = None
    with tempfile.TemporaryDirectory() as tmp:
        if url is None:
            service = Service(load_settings(
                _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp}/bench.db", port=0,
                store_name=STORE, faq_dir=faq_dir))
            await service.start()
            url = f"http://127.0.0.1:{service.port}"
        checker = Checker(load_faq_dir(faq_dir), service)
        passed: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        turns: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        failures: list[str] = []
        try:
            async with aiohttp.ClientSession(base_url=url) as client:
                for conv in conversations:
                    visitor = Visitor(client)
                    ok = True
                    for n, turn in enumerate(conv["turns"], 1):
                        replies, status = await visitor.say(turn["say"])
                        problem = await checker.check(turn["expect"], conv["lang"], replies,
                                                      status)
                        for tag in (*conv["tags"], f"lang:{conv['lang']}"):
                            turns[tag][0] += problem is None
                            turns[tag][1] += 1
                        if problem:
                            ok = False
                            failures.append(f"{conv['id']} turn {n} {turn['say']!r}: {problem}")
                    for tag in (*conv["tags"], f"lang:{conv['lang']}", "all"):
                        passed[tag][0] += ok
                        passed[tag][1] += 1
        finally:
            if service is not None:
                await service.stop()
    print(f"{len(conversations)} conversations, {sum(len(c['turns']) for c in conversations)} "
          f"turns ({script.name})\n")
    print(f"{'capability':22} {'conversations':>15} {'turns':>12}")
    for tag in sorted(passed, key=lambda t: (t == "all", t.startswith("lang:"), t)):
        p, n = passed[tag]
        tp, tn = turns.get(tag, [0, 0])
        turn_col = f"{tp}/{tn}" if tn else ""
        print(f"{tag:22} {p:>5}/{n:<3} {p / n:6.0%} {turn_col:>12}")
    if failures and (verbose or len(failures) <= 20):
        print("\nfailed turns:")
        for line in failures:
            print("  " + line)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--script", type=Path, default=ROOT / "bench" / "conversations.yaml")
    parser.add_argument("--url", help="a running service (default: start one in-process)")
    parser.add_argument("--faq-dir", type=Path, default=ROOT / "faq" / "sample")
    parser.add_argument("--verbose", action="store_true", help="list every failed turn")
    args = parser.parse_args()
    conversations = yaml.safe_load(args.script.read_text(encoding="utf-8"))
    sys.exit(asyncio.run(run(conversations, args.script, args.url, args.faq_dir, args.verbose)))


if __name__ == "__main__":
    main()

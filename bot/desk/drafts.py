"""FAQ drafts from staff answers: the desk's "Save as FAQ" shortcut.

A staff reply that answered a question the bot could not becomes a draft entry: the customer's
wording as a phrasing, the staff text as the answer in the customer's language, the stage and
tags of the bot's candidates. Drafts go to their own YAML file, outside the FAQ folder and
marked `draft: true`, so nothing is served until an admin reviews it and moves it into the FAQ
(in git, as every FAQ change).
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.models import Message
from bot.desk.jobs import FaqLookup
from bot.desk.terms import DeskRefused
from faq.loader import lint_faq_file

MS = Message.__table__.c
_SLACK_MARKUP = re.compile(r"<(?:https?://[^|>]+\|)?([^>]+)>")


@dataclass(frozen=True, slots=True)
class Draft:
    escalation_id: int
    question: str
    language: str
    answer: str
    stage: str | None
    tags: tuple[str, ...]


def plain(text: str) -> str:
    """Slack's `<url|label>` links as their label, so the draft reads as the customer saw it."""
    return _SLACK_MARKUP.sub(r"\1", text).strip()


class DraftsFile:
    """One YAML file of draft entries, appended to atomically, off the event loop."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def draft_from(self, conn: AsyncConnection, escalation: Row[Any], staff_text: str,
                         faq: FaqLookup | None, default_language: str) -> Draft:
        question = escalation.question or (await conn.execute(select(MS.text).where(
            MS.conversation_id == escalation.conversation_id, MS.direction == "in")
            .order_by(MS.id.desc()).limit(1))).scalar() or ""
        entries = [faq.get(str(c.get("faq_id"))) if faq else None
                   for c in escalation.candidates or ()]
        found = [e for e in entries if e is not None]
        stage = next((e.stage for e in found if e.stage), None)
        tags = tuple(sorted({t for e in found for t in e.tags}))
        return Draft(int(escalation.id), " ".join(question.split())[:500],
                     escalation.language or default_language, plain(staff_text)[:4000],
                     stage, tags)

    async def append(self, draft: Draft) -> tuple[str, list[str]]:
        """Write the draft; returns its id and what the FAQ linter says of the file."""
        if not draft.question or not draft.answer:
            raise DeskRefused("A draft needs the customer's question and a staff answer.")
        async with self._lock:
            return await asyncio.to_thread(self._append, draft)

    def _append(self, draft: Draft) -> tuple[str, list[str]]:
        existing = self.path.read_text(encoding="utf-8") if self.path.exists() else \
            "# FAQ drafts saved from the Slack desk. Review, then move entries into the FAQ\n" \
            "# folder and remove `draft: true`; nothing here is served.\n"
        ids = set(re.findall(r"^- id: (\S+)", existing, re.MULTILINE))
        base = f"staff_answer_{draft.escalation_id}"
        entry_id, n = base, 1
        while entry_id in ids:
            n += 1
            entry_id = f"{base}_{n}"
        entry: dict[str, Any] = {"id": entry_id, "draft": True}
        if draft.stage:
            entry["stage"] = draft.stage
        if draft.tags:
            entry["tags"] = list(draft.tags)
        entry["questions"] = [draft.question]
        entry["answer"] = {draft.language: draft.answer}
        block = (f"\n# from escalation #{draft.escalation_id}, "
                 f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n"
                 + yaml.safe_dump([entry], allow_unicode=True, sort_keys=False, width=100))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(existing.rstrip("\n") + "\n" + block, encoding="utf-8")
        os.replace(tmp, self.path)
        problems = [p.message for p in lint_faq_file(self.path)
                    if p.blocks_load and p.level == "error"]
        return entry_id, problems


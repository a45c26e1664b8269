"""The FAQ the service answers from: loaded at start, reloaded when files change.

A broken file never takes the bot down: the last good FAQ keeps serving and the problem is
reported with file and line (in the log and at /api/faq).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from bot.errors import FaqLoadError
from faq.loader import load_faq_dir
from faq.matcher import DEFAULT_THRESHOLD, Matcher
from faq.models import FaqEntry

log = logging.getLogger(__name__)


class FaqStore:
    def __init__(self, path: Path, *, threshold: float | None = None,
                 semantic_model: str | None = None) -> None:
        self.path = path
        self.threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        self.semantic_model = semantic_model
        self.last_error: FaqLoadError | None = None
        self.version = 0
        self.entries, self.matcher = self._build()
        self.version = 1

    def _build(self) -> tuple[list[FaqEntry], Matcher]:
        entries = load_faq_dir(self.path)
        return entries, Matcher(entries, threshold=self.threshold)

    def get(self, entry_id: str) -> FaqEntry | None:
        return next((e for e in self.entries if e.id == entry_id), None)

    def reload(self) -> bool:
        try:
            entries, matcher = self._build()
        except FaqLoadError as exc:
            return self._keep_last_good(exc)
        self._swap(entries, matcher)
        return True

    async def reload_async(self) -> bool:
        """Build the new matcher in a thread so the event loop keeps serving."""
        try:
            entries, matcher = await asyncio.to_thread(self._build)
        except FaqLoadError as exc:
            return self._keep_last_good(exc)
        self._swap(entries, matcher)
        return True

    def _keep_last_good(self, exc: FaqLoadError) -> bool:
        self.last_error = exc
        log.warning("FAQ not reloaded, still serving version %d: %s", self.version, exc)
        return False

    def _swap(self, entries: list[FaqEntry], matcher: Matcher) -> None:
        self.entries, self.matcher = entries, matcher
        self.last_error = None
        self.version += 1
        log.info("FAQ reloaded from %s: %d entries (version %d)", self.path, len(entries),
                 self.version)

    async def watch(self, stop: asyncio.Event) -> None:
        from watchfiles import awatch

        async for _changes in awatch(self.path, stop_event=stop, debounce=300):
            await self.reload_async()

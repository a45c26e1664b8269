"""The FAQ the service answers from: loaded at start, reloaded when its files change.

A broken file never takes the bot down: the last good FAQ keeps serving, the problem is kept in
`last_error` (file, line, problem) and logged once. Building a matcher takes a few
milliseconds for a shop FAQ but seconds for a very large one, so the watcher builds it in a
thread and swaps it in whole: readers always see a consistent (entries, matcher) pair.

In the neural mode, adapting the model to a new or edited FAQ takes minutes of CPU: the FAQ is
served at once with the plain model, the adaptation runs in a background thread, and its matcher
is swapped in when it is done, unless the FAQ changed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path

from watchfiles import awatch

from core.errors import FaqLoadError
from faq.loader import load_faq_dir
from faq.matcher import DEFAULT_THRESHOLD, Matcher
from faq.models import FaqEntry
from faq.settings import SemanticSettings

log = logging.getLogger(__name__)

WATCH_DEBOUNCE_MS = 300


class FaqStore:
    """The current FAQ entries and their matcher, with hot reload.

    Args:
        path: directory of FAQ `*.yaml` files.
        threshold: matcher threshold; None uses the matcher's default.
        semantic_model: name or path of a sentence-transformers model to blend in ("minilm":
            the weights of the `semantic` extra); None keeps the matcher purely lexical.

    Raises:
        FaqLoadError: if the initial load fails (the service should not start without an FAQ).
        FaqError: a semantic model is set but the extra is missing or the model won't load.
    """

    def __init__(
        self,
        path: Path,
        *,
        threshold: float | None = None,
        semantic_model: str | None = None,
        semantic_settings: SemanticSettings | None = None,
    ) -> None:
        self.path = Path(path)
        #: the neural mode's settings, built once by the caller (None: from the environment)
        self.semantic_settings = semantic_settings
        self.threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        self._threshold_setting = threshold  # None: the matcher's (lexical or neural) default
        self.semantic_model = semantic_model
        self.last_error: FaqLoadError | None = None
        self.version = 0
        # The background adaptation of the latest build, if one runs (the neural mode).
        self.adaptation: threading.Thread | None = None
        self._builds = 0
        self._lock = threading.Lock()
        entries, matcher = self._build()
        self._install(entries, matcher)

    @property
    def entries(self) -> list[FaqEntry]:
        return self._entries

    @property
    def matcher(self) -> Matcher:
        return self._matcher

    def get(self, entry_id: str) -> FaqEntry | None:
        """The entry with this id in the current FAQ, or None."""
        return self._by_id.get(entry_id)

    def reload(self) -> bool:
        """Load the directory again; on error keep serving the last good FAQ and return False."""
        try:
            entries, matcher = self._build()
        except FaqLoadError as error:
            return self._keep_last_good(error)
        self._install(entries, matcher)
        return True

    async def reload_async(self) -> bool:
        """`reload` with the parsing and index building done in a worker thread."""
        try:
            entries, matcher = await asyncio.to_thread(self._build)
        except FaqLoadError as error:
            return self._keep_last_good(error)
        self._install(entries, matcher)
        return True

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload whenever a file in the directory changes, until `stop` is set."""
        async for changes in awatch(
            self.path, stop_event=stop, debounce=WATCH_DEBOUNCE_MS, recursive=False
        ):
            if any(Path(name).suffix in (".yaml", ".yml") for _, name in changes):
                await self.reload_async()

    def _build(self) -> tuple[list[FaqEntry], Matcher]:
        entries = load_faq_dir(self.path)
        with self._lock:
            self._builds += 1
            build = self._builds
        matcher = Matcher(entries, threshold=self.threshold)
        if self.semantic_model:
            # optional extra, imported only when asked
            from faq.semantic import adaptation_pending, with_semantic

            later = adaptation_pending(self.semantic_model, entries, self.semantic_settings)
            matcher = with_semantic(matcher, self.semantic_model, threshold=self._threshold_setting,
                                    adapt=False if later else None,
                                    settings=self.semantic_settings)
            self.threshold = matcher.threshold
            if later:
                self._adapt_in_background(entries, build)
        return entries, matcher

    def _adapt_in_background(self, entries: list[FaqEntry], build: int) -> None:
        def adapt() -> None:
            from faq.semantic import with_semantic

            started = time.monotonic()
            try:
                matcher = with_semantic(Matcher(entries), str(self.semantic_model),
                                        threshold=self._threshold_setting, adapt=True,
                                        settings=self.semantic_settings)
            except Exception:  # the plain model keeps serving; the log says why
                log.exception("FAQ model adaptation failed; the plain model keeps answering")
                return
            with self._lock:
                if build != self._builds:
                    log.info("FAQ model adaptation of an older FAQ done, not used: it changed")
                    return
                self.threshold = matcher.threshold
                self._install(entries, matcher)
            log.info("FAQ model adapted to this FAQ in %.0f s: now answering with it",
                     time.monotonic() - started)

        log.info("FAQ model adaptation started in the background (minutes of CPU, once per FAQ"
                 " version); the plain model answers meanwhile")
        self.adaptation = threading.Thread(target=adapt, name="faq-adaptation", daemon=True)
        self.adaptation.start()

    def _install(self, entries: list[FaqEntry], matcher: Matcher) -> None:
        self._entries, self._matcher = entries, matcher
        self._by_id = {entry.id: entry for entry in entries}
        self.last_error = None
        self.version += 1
        log.info("FAQ loaded from %s: %d entries (version %d)", self.path, len(entries),
                 self.version)

    def _keep_last_good(self, error: FaqLoadError) -> bool:
        self.last_error = error
        log.warning("FAQ not reloaded, still serving version %d: %s", self.version, error)
        return False

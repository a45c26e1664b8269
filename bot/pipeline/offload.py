"""FAQ matching on another core: the first step of the pipeline in a child process.

Understanding a message (the FAQ match and the text tests) is pure CPU and the largest single
cost of a message; in the one-process service it shares one core with the HTTP side and the
database. A child process with its own copy of the FAQ does it instead, while the event loop
goes on serving pages. The child builds its FAQ from the same files; every answer carries the
fingerprint of the FAQ it used, and one that is not the service's current FAQ (a reload in
between) is not used: the message is understood in the process, as it is whenever the child is
not ready, has died, or the FAQ uses the neural model (one copy of the model is enough).
Results cross the process boundary as entry ids and scores, never entry objects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from bot.pipeline.understand import Understanding, understand
from channels.base import InboundMessage
from faq.models import Candidate, FaqEntry, MatchResult
from faq.store import FaqStore

log = logging.getLogger(__name__)

#: (entry id or None, score, decision, candidates as (id, score))
PackedMatch = tuple[str | None, float, str, tuple[tuple[str, float], ...]]
Packed = tuple[PackedMatch | None, tuple[PackedMatch, ...], str | None, str | None, bool, bool,
               bool, bool]


def fingerprint(entries: Sequence[FaqEntry], threshold: float) -> str:
    """The same for two FAQs built from the same files with the same threshold."""
    return hashlib.sha256(f"{threshold!r}{entries!r}".encode()).hexdigest()


class UnderstandingOffload:
    """`understand_many(messages)`: their `Understanding`s from the child process, or None
    when the caller should understand them itself."""

    def __init__(self, faq: FaqStore, *, processes: int = 1) -> None:
        self.faq = faq
        self.processes = processes
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._starting: asyncio.Task[None] | None = None
        self._ready_for: str | None = None  # the fingerprint the child's FAQ has
        self._mine: tuple[int, str] | None = None  # (FAQ version, its fingerprint)
        self.offloaded = 0

    def _fingerprint(self) -> str:
        version = self.faq.version
        if self._mine is None or self._mine[0] != version:
            self._mine = (version, fingerprint(self.faq.entries, self.faq.threshold))
        return self._mine[1]

    def start(self) -> None:
        """Start the child in the background; messages are understood here until it is up."""
        if self._starting is None or self._starting.done():
            self._starting = asyncio.get_running_loop().create_task(self._start())

    async def started(self, *, within: float, processes: int = 1) -> bool:
        """Start `processes` children and wait for them to be up, at most `within` seconds (a
        service opening its doors then handles its first burst at full speed); False if they
        are not up by then."""
        self.processes = processes
        self.start()
        assert self._starting is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._starting), timeout=within)
        return self._ready_for is not None

    async def _start(self) -> None:
        self._shutdown()
        pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"),
            initializer=_child_start,
            initargs=(str(self.faq.path), self.faq.threshold, os.getpid()))
        self._pool = pool
        try:
            ready = await asyncio.get_running_loop().run_in_executor(pool, _child_fingerprint)
        except Exception as exc:  # noqa: BLE001 - the service goes on matching in-process
            log.warning("FAQ matching stays in the service process: its helper process did "
                        "not start (%s)", type(exc).__name__)
            self._shutdown()
            return
        self._ready_for = ready
        log.info("FAQ matching runs in %d helper process%s", self.processes,
                 "" if self.processes == 1 else "es")

    async def understand_many(self, messages: Sequence[InboundMessage]
                              ) -> list[Understanding] | None:
        pool, ready_for = self._pool, self._ready_for
        if pool is None or ready_for is None:
            return None
        mine = self._fingerprint()
        if ready_for != mine:  # the FAQ was reloaded: a child with the new one
            self._ready_for = None
            self.start()
            return None
        try:
            used, packed = await asyncio.get_running_loop().run_in_executor(
                pool, _child_understand, [m.text for m in messages])
        except BrokenProcessPool:
            log.error("the FAQ matching helper process died; starting another")
            self._ready_for = None
            self.start()
            return None
        if used != mine:
            return None
        try:
            found = [_unpack(p, self._entry) for p in packed]
        except LookupError:  # cannot be with one fingerprint; matched here if it ever is
            return None
        self.offloaded += len(messages)
        return found

    def _entry(self, entry_id: str) -> FaqEntry:
        entry = self.faq.get(entry_id)
        if entry is None:
            raise LookupError(entry_id)
        return entry

    def _shutdown(self) -> None:
        pool, self._pool, self._ready_for = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def stop(self) -> None:
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
        pool, self._pool, self._ready_for = self._pool, None, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)


# --- the child process ---------------------------------------------------------------------

_CHILD: dict[str, Any] = {}
#: how often the helper checks that the service that started it is still there
PARENT_CHECK_SECONDS = 0.5


def _child_start(path: str, threshold: float, parent: int) -> None:
    threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()
    faq = FaqStore(Path(path), threshold=threshold)
    _CHILD["faq"] = faq
    _CHILD["fingerprint"] = fingerprint(faq.entries, faq.threshold)


def _exit_with(parent: int) -> None:
    """A service killed outright (SIGKILL, OOM) leaves no helper behind."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _child_fingerprint() -> str:
    return str(_CHILD["fingerprint"])


def _child_understand(texts: list[str]) -> tuple[str, list[Packed]]:
    faq: FaqStore = _CHILD["faq"]
    match = faq.matcher.match
    return _CHILD["fingerprint"], [
        _pack(understand(InboundMessage(channel="-", external_id="-", address="-", text=t),
                         match)) for t in texts]


# --- across the boundary: ids and scores -----------------------------------------------------

def _pack_match(m: MatchResult | None) -> PackedMatch | None:
    if m is None:
        return None
    return (m.entry.id if m.entry else None, m.score, m.decision,
            tuple((c.entry_id, c.score) for c in m.candidates))


def _pack(u: Understanding) -> Packed:
    return (_pack_match(u.match), tuple(p for a in u.answers if (p := _pack_match(a))),
            u.small_talk, u.small_talk_entry.id if u.small_talk_entry else None, u.complaint,
            u.asks_for_human, u.not_helped, u.vague)


def _unpack_match(p: PackedMatch | None, entry: Callable[[str], FaqEntry]
                  ) -> MatchResult | None:
    if p is None:
        return None
    entry_id, score, decision, candidates = p
    return MatchResult(entry=entry(entry_id) if entry_id is not None else None, score=score,
                       decision=decision,  # type: ignore[arg-type]
                       candidates=tuple(Candidate(i, s) for i, s in candidates))


def _unpack(p: Packed, entry: Callable[[str], FaqEntry]) -> Understanding:
    whole, answers, small_talk, small_talk_entry, complaint, human, not_helped, vague = p
    return Understanding(
        match=_unpack_match(whole, entry),
        answers=tuple(m for a in answers if (m := _unpack_match(a, entry)) is not None),
        small_talk=small_talk,
        small_talk_entry=entry(small_talk_entry) if small_talk_entry else None,
        complaint=complaint, asks_for_human=human, not_helped=not_helped, vague=vague)

"""The composition root: builds the database, queues, FAQ, rules, channels and HTTP app, and
runs them until asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from bot.channel_store import DatabaseChannelStore
from bot.connections import SERVED, ConnectionGuard, raise_open_files_limit
from bot.db.engine import Database
from bot.deliveries import DeliveryLog
from bot.desk.actions import DeskActions
from bot.desk.routing import RoutingStore
from bot.desk.slack import Desk
from bot.housekeeping import Housekeeping
from bot.leader import make_leader
from bot.lifecycle import LifecycleStore
from bot.lifecycle_schedule import StageSchedule
from bot.metrics import Metrics, metrics_view
from bot.outbox import OutboxSender
from bot.pipeline import Outcome, Pipeline, PipelineConfig, RuleConfig
from bot.pipeline.offload import UnderstandingOffload
from bot.playbook_runner import PlaybookRunner, RunnerConfig
from bot.playbooks import PlaybookStore
from bot.queue import Inbox, QueuedItem
from bot.settings import Settings
from bot.wakeups import StoredLog, extend_transcripts, wake_readers
from bot.web import build_http_app
from bot.worker import WorkerPool
from channels import CHANNELS
from channels.base import Channel, ChannelContext
from channels.slack import SlackChannel
from core.clock import Clock, system_clock
from core.errors import QueueError
from faq.store import FaqStore

if TYPE_CHECKING:
    from bot.redis_queue import RedisInbox, RedisWakeups

log = logging.getLogger(__name__)


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


class Service:
    """Everything `python -m bot serve` runs, in one process."""

    def __init__(self, settings: Settings, *, clock: Clock = system_clock) -> None:
        """`clock` gives the time for every decision that depends on it (repeats, stages,
        business hours, the stage schedule, store webhooks); tests pass their own."""
        self.settings = settings
        self.clock = clock
        self.db = Database(settings.database_url, background_checkpoints=True)
        self.inbox: Inbox = Inbox(self.db, max_attempts=settings.max_attempts)
        self.redis_inbox: RedisInbox | None = None
        self.wakeups: RedisWakeups | None = None
        if settings.redis_url:  # several worker processes: Redis Streams spread the work
            from bot.redis_queue import RedisInbox, RedisWakeups  # only imported when used

            self.inbox = self.redis_inbox = RedisInbox(
                self.db, settings.redis_url, max_attempts=settings.max_attempts,
                prefix=settings.redis_prefix, reclaim_seconds=settings.redis_reclaim_seconds,
                max_deliveries=settings.redis_max_deliveries)
            # The outbox sender may run in another process: wake it through Redis.
            self.wakeups = RedisWakeups(self.redis_inbox.redis, settings.redis_prefix)
        self.leader = make_leader(redis_url=settings.redis_url, db=self.db,
                                  prefix=settings.redis_prefix, ttl=settings.leader_ttl_seconds)
        self.metrics = Metrics()
        self.faq = FaqStore(settings.faq_dir, threshold=settings.faq_threshold,
                            semantic_model=settings.faq_semantic_model,
                            semantic_settings=settings.semantic)
        self.lifecycle = LifecycleStore(settings.lifecycle_rules)
        self.stage_schedule = StageSchedule(self.db, self.lifecycle, clock,
                                            interval=settings.lifecycle_schedule_seconds)
        ctx = ChannelContext(settings=settings, intake=self.inbox, clock=clock,
                             deliveries=DeliveryLog(self.db),
                             store=DatabaseChannelStore(self.db))
        self.channels: dict[str, Channel] = {}
        for name, spec in CHANNELS.items():
            if not spec.configured(settings):
                continue
            channel = spec.load().from_context(ctx)
            if channel is not None:
                self.channels[name] = channel
        webchat, mail = self.channels.get("webchat"), self.channels.get("email")
        if webchat is not None and mail is not None:  # staff replies reach visitors who left
            webchat.mailer = mail.send_plain  # type: ignore[attr-defined]
        slack = self.channels.get("slack")
        self.desk = (Desk.from_service(settings, self.db, slack, self.faq, clock=self.clock)
                     if isinstance(slack, SlackChannel) else None)
        if self.desk is not None and isinstance(slack, SlackChannel):
            slack.add_desk(self.desk)  # staff threads, buttons and /inbox go to the desk
        #: staff actions (Slack desk or dashboard); None when neither can be reached
        self.desk_actions: DeskActions | None = self.desk
        if self.desk is None and settings.admin_token is not None:
            self.desk_actions = DeskActions(
                self.db, RoutingStore(settings.desk_routing_file), faq=self.faq,
                store_name=settings.store_name, default_language=settings.default_language,
                staffed=settings.desk_configured, clock=self.clock)
        #: FAQ matching in a helper process (not with the neural model: one copy of it)
        self.offload = UnderstandingOffload(self.faq)
        self.pipeline = Pipeline(self.faq, self.lifecycle, PipelineConfig(
            RuleConfig(store_name=settings.store_name,
                       default_language=settings.default_language,
                       repeat_window=timedelta(minutes=settings.repeat_window_minutes),
                       answer_while_waiting=settings.answer_while_waiting),
            stored_delivery=frozenset(name for name, channel in self.channels.items()
                                      if channel.delivers_by_storing),
            threads_own=frozenset(name for name, channel in self.channels.items()
                                  if channel.threads_are_conversations),
            unverified=frozenset(name for name, channel in self.channels.items()
                                 if not channel.vouches_for_contacts)),
            desk=self.desk_actions, clock=self.clock, offload=self.offload)
        self.outbox = OutboxSender(self.db, self.metrics.instrument(self.channels),
                                   concurrency=settings.send_concurrency,
                                   max_attempts=settings.send_max_attempts,
                                   send_timeout=settings.send_timeout,
                                   reply_window=frozenset(
                                       n for n, c in self.channels.items() if c.reply_window),
                                   reporting=frozenset(n for n, c in self.channels.items()
                                                       if c.reports_deliveries))
        self.playbooks = PlaybookStore(settings.playbooks_file)
        self.playbook_runner = PlaybookRunner(
            self.db, self.playbooks, clock, RunnerConfig(
                store_name=settings.store_name, default_language=settings.default_language,
                public_url=settings.public_url, email_from=settings.email_from,
                cap=settings.playbook_marketing_per_week, quiet=settings.quiet_hours,
                tz=settings.store_timezone,
                unsubscribe_secret=settings.unsubscribe_secret.get_secret_value()
                if settings.unsubscribe_secret else None),
            channels=self.channels.keys(),
            stored_delivery=[n for n, c in self.channels.items() if c.delivers_by_storing],
            interval=settings.playbook_tick_seconds, on_queued=self._playbook_queued)
        self.workers = WorkerPool(self.db, self.inbox, self.pipeline, workers=settings.workers,
                                  batch=settings.queue_batch, on_committed=self.outbox.wake)
        self.workers.listeners.append(self.metrics.on_outcome)
        self.workers.listeners.append(self._replies_stored)
        if self.wakeups is not None:
            self.workers.on_committed = self._replies_committed
        if self.desk_actions is not None:
            self.desk_actions.attach(self.outbox, self.workers, self.channels)
        self.http = build_http_app(self)
        #: what this process committed for web chat visitors, for the next wake-up
        self._stored_for = StoredLog()
        self.stop_event = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._runner: web.AppRunner | None = None
        self.connections: ConnectionGuard | None = None
        self.port: int | None = None

    async def start(self, *, http: bool = True, workers: bool = True) -> None:
        """`http`: webhooks, web chat and API; `workers`: queue workers, outbox and pollers."""
        await self.db.upgrade()
        await self.db.optimize()
        self._spawn(self.db.checkpoints(self.stop_event), "wal-checkpoints")
        if self.settings.redis_url:
            try:
                await self.inbox.ping()
            except Exception as exc:  # noqa: BLE001 - becomes the one line the operator reads
                raise QueueError(f"cannot reach Redis at {_where(self.settings.redis_url)} "
                                 f"({type(exc).__name__}): is it running? check REDIS_URL"
                                 ) from None
        if workers:
            await self._start_workers(http=http)
        if self.wakeups is not None:
            handlers: dict[str, Callable[[str], None]] = {}
            if workers:
                handlers["outbox"] = lambda _arg: self.outbox.wake()
            if http:
                handlers["stored"] = functools.partial(extend_transcripts, self.channels)
                handlers["replies"] = functools.partial(wake_readers, self.channels)
                handlers["typing"] = self._show_typing
            self._spawn(self.wakeups.listen(self.stop_event, handlers), "wakeups")
        if http:
            raise_open_files_limit()
            self._runner = web.AppRunner(
                self.http, access_log=None, shutdown_timeout=5,
                keepalive_timeout=self.settings.http_keepalive_timeout)
            await self._runner.setup()
            assert self._runner.server is not None
            self.connections = ConnectionGuard(
                self._runner.server, self.http[SERVED],
                header_timeout=self.settings.http_header_timeout,
                max_connections=self.settings.http_max_connections)
            self._spawn(self.connections.run(self.stop_event), "connection-guard")
            site = web.TCPSite(self._runner, self.settings.host, self.settings.port,
                               backlog=self.settings.http_backlog)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        log.info("storedesk ready: channels %s, %d FAQ entries, workers %d, database %s",
                 ", ".join(self.channels) or "none", len(self.faq.entries),
                 self.settings.workers, "SQLite" if self.db.is_sqlite else "PostgreSQL")
        if self.desk is None and self.settings.desk_configured:
            log.info("staff desk: the dashboard (/dashboard); no Slack desk configured")
        elif self.desk is None:
            log.warning("no staff desk configured (SLACK_BOT_TOKEN + SLACK_STAFF_CHANNEL, or "
                        "DESK_IN_DASHBOARD with ADMIN_TOKEN): questions the bot cannot answer "
                        "wait in the dashboard, and customers are not promised a reply from a "
                        "person")
        if http:
            log.info("web chat on http://%s:%s/", self.settings.host, self.port)
        elif self.settings.metrics_port is not None:
            await self._start_metrics_site(self.settings.metrics_port)

    async def _start_workers(self, *, http: bool) -> None:
        for channel in self.channels.values():
            await channel.start()
        for name, channel in self.channels.items():
            if type(channel).poll is not Channel.poll:
                poller = functools.partial(self._run_poller, channel)
                self._spawn(self.leader.run(f"poll:{name}", self.stop_event, poller),
                            f"poll-{name}")
        if self.redis_inbox is not None:
            self._spawn(self.leader.run("inbox-sweeper", self.stop_event,
                                        self.redis_inbox.sweep), "inbox-sweeper")
        helpers = self.settings.matching_helpers(serves_http=http)
        if helpers and not await self.offload.started(within=15, processes=helpers):
            log.warning("FAQ matching runs in the service process until its helper is up")
        self._spawn(self.workers.run(self.stop_event), "workers")
        # One sender at a time across processes, so a reply is never sent twice.
        self._spawn(self.leader.run("outbox", self.stop_event, self.outbox.run), "outbox")
        if self.desk is not None:
            self._spawn(self.leader.run("desk", self.stop_event, self.desk.run), "desk")
        chores = Housekeeping(self.db, self.inbox, self.clock,
                              keep=timedelta(hours=self.settings.inbox_keep_hours),
                              retention_days=self.settings.message_retention_days)
        self._spawn(self.leader.run("housekeeping", self.stop_event, chores.run),
                    "housekeeping")
        # time rules (no order for N days): one process at a time, catching up at once
        self._spawn(self.leader.run("lifecycle-schedule", self.stop_event,
                                    self.stage_schedule.run), "lifecycle-schedule")
        # due playbook steps: in every process; a step is claimed in its sending transaction
        self._spawn(self.playbook_runner.run(self.stop_event), "playbooks")
        self._spawn(self.playbooks.watch(self.stop_event), "playbooks-watch")
        self._spawn(self.faq.watch(self.stop_event), "faq-watch")
        self._spawn(self.lifecycle.watch(self.stop_event), "rules-watch")

    def _replies_stored(self, item: QueuedItem, outcome: Outcome) -> None:
        """Wake web chat readers: the customer's message and its replies are in the
        transcript once committed (the reply is delivered by the commit itself)."""
        channel = self.channels.get(item.message.channel)
        if channel is None or not channel.delivers_by_storing:
            return
        channel.replies_stored(item.message.address, outcome.stored,
                               after=outcome.stored_after)
        if outcome.reply_ids:
            self.metrics.sends.labels(item.message.channel, "ok").inc(len(outcome.reply_ids))
        if self.wakeups is not None:  # the reader may wait in another process
            self._stored_for.add(f"{item.message.channel}/{item.message.address}",
                                 outcome.stored, outcome.stored_after)

    def _playbook_queued(self, stored: list[tuple[str, str]]) -> None:
        """Playbook messages were committed: the outbox sends them (in this process or, with
        Redis, the one holding its lock); the web chat's are delivered, so wake its readers."""
        for name, address in stored:
            channel = self.channels.get(name)
            if channel is not None:
                channel.replies_stored(address)
            if self.wakeups is not None:
                self._stored_for.add(f"{name}/{address}")
        self._replies_committed()

    def _replies_committed(self) -> None:
        self.outbox.wake()
        if self.wakeups is not None:
            self.wakeups.publish_soon("outbox")
            for argument in self._stored_for.take():
                self.wakeups.publish_soon("stored " + argument)

    def typing(self, channel: str, address: str) -> None:
        """Staff are writing to this customer: their chat shows it, in whichever process
        serves their page."""
        self._show_typing(f"{channel}/{address}")
        if self.wakeups is not None:
            self.wakeups.publish_soon(f"typing {channel}/{address}")

    def _show_typing(self, target: str) -> None:
        name, _, address = target.partition("/")
        channel = self.channels.get(name)
        if channel is not None and address and hasattr(channel, "typing"):
            channel.typing(address)

    async def _start_metrics_site(self, port: int) -> None:
        """Worker processes have no web app; they still answer probes and scrapes."""
        from bot.appkeys import SERVICE
        from bot.web import healthz, readyz

        app = web.Application()
        app[SERVICE] = self
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics_view)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.host, port).start()

    async def _run_poller(self, channel: Channel, stop: asyncio.Event | None = None) -> None:
        """Run a channel's pull loop; restart it with a pause if it crashes. `stop` is set
        when the service stops or this process loses the poller's lock."""
        stop = stop or self.stop_event
        while not stop.is_set():
            try:
                await channel.poll(stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s poller failed; restarting in 5 s", channel.name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=5)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self.stop_event.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("background task %s stopped: %r", task.get_name(), exc)

    async def stop(self) -> None:
        """Graceful (SIGTERM): take no new work, let workers finish their batch and the outbox
        its sends, then close. Work still running after 10 s is cancelled: its transaction
        rolls back and the message stays queued for another worker."""
        self.stop_event.set()
        if self._runner is not None:
            await self._runner.cleanup()
        _done, pending = await asyncio.wait(self._tasks, timeout=10) if self._tasks else (
            set(), set())
        for task in pending:
            task.cancel()
        for channel in self.channels.values():
            with contextlib.suppress(Exception):
                await channel.stop()
        await self.offload.stop()
        with contextlib.suppress(Exception):
            await self.inbox.close()
        with contextlib.suppress(Exception):
            await self.leader.close()
        await self.db.close()
        log.info("storedesk stopped")

    async def run_forever(self, *, http: bool = True, workers: bool = True,
                          freeze: bool = False) -> None:
        """Start, serve until asked to stop, stop; a start that fails half-way (a port in
        use) stops what it had started, so no task is cut inside a transaction. `freeze`
        (a service process, not a test): what exists after the start (modules, FAQ index,
        rules) is moved out of the garbage collector's sight, so its collections only walk
        what requests create."""
        try:
            await self.start(http=http, workers=workers)
            if freeze:
                gc.collect()
                gc.freeze()
            await self.stop_event.wait()
        finally:
            await self.stop()

"""The Slack staff desk: escalation cards, replies from threads, handoff, `/inbox`, re-posts.

The staff actions themselves live in `bot.desk.actions` (the dashboard uses the same ones); this
is their Slack side. Durability: the handler calls the desk inside the message transaction; the
desk only writes `desk_job` rows there (post the card, mirror a message, update the card).
`run()` delivers them to Slack afterwards through `bot.desk.jobs.DeskPoster`, in order per
escalation, retrying while Slack is down, so a card is never lost and never blocks the
customer's reply. Staff actions (buttons, thread replies, `/inbox`, shortcuts) change the
database in one transaction that also queues the customer message (outbox) and the card update
(desk job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.db.engine import Database
from bot.db.models import ChannelState, Conversation, Customer, DeskJob, Escalation
from bot.desk import cards
from bot.desk.actions import DeskActions
from bot.desk.drafts import DraftsFile
from bot.desk.inbox import HELP, SLACK_USER, inbox_command
from bot.desk.jobs import DeskPoster, FaqLookup
from bot.desk.routing import RoutingStore
from bot.desk.terms import LIVE, OPEN, DeskRefused, note_text
from bot.settings import Settings
from channels.base import with_links
from channels.edge import id_param
from channels.slack import SlackChannel
from channels.slack_api import Profiles, call_slack, files_of, is_human_message
from core.errors import ChannelError, InputError

log = logging.getLogger(__name__)
ES, CV, CU = Escalation.__table__.c, Conversation.__table__.c, Customer.__table__.c
DJ = DeskJob.__table__.c
SAVE_AS_FAQ = "desk_save_faq"


def _insert_ignore(conn: AsyncConnection, table: Any) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


class Desk(DeskActions):
    """The staff actions with Slack: cards, threads, buttons, `/inbox`, shortcuts."""

    mirrors = True

    def __init__(self, db: Database, client: AsyncWebClient, routing: RoutingStore, *,
                 default_channel: str, faq: FaqLookup | None = None,
                 profiles: Profiles | None = None, store_name: str = "Our Store",
                 default_language: str = "en", max_attempts: int = 50,
                 drafts: DraftsFile | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        super().__init__(db, routing, faq=faq, store_name=store_name,
                         default_language=default_language, clock=clock)
        self.client = client
        self.default_channel = default_channel
        self.profiles = profiles or Profiles(client)
        self.drafts = drafts
        self.poster = DeskPoster(db, client, default_channel=default_channel, faq=faq,
                                 now=lambda: self.clock(), max_attempts=max_attempts)
        self.wakeup = asyncio.Event()
        self.check_every = 30.0
        self.refresh_every = timedelta(minutes=5)
        self._refreshed: dict[int, datetime] = {}

    @classmethod
    def from_service(cls, settings: Settings, db: Database, slack: SlackChannel,
                     faq: FaqLookup | None, *,
                     clock: Callable[[], datetime] | None = None) -> Desk | None:
        """The desk on the Slack channel's app when a staff channel is set, else None; the
        composition root then hands it to the channel (`SlackChannel.add_desk`)."""
        if not settings.slack_staff_channel:
            return None
        return cls(db, slack.client, RoutingStore(settings.desk_routing_file),
                   default_channel=settings.slack_staff_channel, faq=faq,
                   profiles=slack.profiles, store_name=settings.store_name,
                   default_language=settings.default_language,
                   drafts=DraftsFile(settings.faq_drafts_file), clock=clock)

    def listen(self, app: AsyncApp) -> None:
        """Register the desk's buttons, `/inbox` and the save-as-FAQ shortcut on the app."""
        app.action(re.compile(r"^desk_"))(self._on_action)
        app.command("/inbox")(self._on_command)
        app.shortcut(SAVE_AS_FAQ)(self._on_save_as_faq)

    def staff_channel(self) -> str | None:
        return self.default_channel

    def wake(self) -> None:
        self.wakeup.set()

    def is_staff_channel(self, channel: str) -> bool:
        return channel == self.default_channel or channel in self.routing.routing.channels()

    async def post_unposted(self) -> int:
        """Escalations raised while no desk was configured (or before this one existed) get
        their card now: nobody is left waiting unseen."""
        has_card = select(DJ.id).where(DJ.escalation_id == ES.id, DJ.kind == "card")
        async with self.db.write() as conn:
            ids = (await conn.execute(select(ES.id).where(
                ES.status.in_(LIVE), ES.staff_thread.is_(None), ~has_card.exists())
                .order_by(ES.id))).scalars().all()
            for esc_id in ids:
                await self._route(conn, esc_id)
        if ids:
            log.info("desk: posting %d escalation(s) raised before the desk was on", len(ids))
            self.wake()
        return len(ids)

    # --- thread messages -------------------------------------------------------------------

    async def on_staff_message(self, event: Mapping[str, Any], *,
                               event_id: str | None) -> None:
        """A message in a desk channel: a thread reply to a card goes to the customer, unless
        it is a note (`note: ...`) or an FAQ answer by id (`answer: <entry>`)."""
        thread, ts = event.get("thread_ts"), str(event.get("ts") or "")
        if not thread or thread == ts or not is_human_message(event):
            return
        user, channel = str(event["user"]), str(event.get("channel"))
        text = str(event.get("text") or "")
        name = (await self.profiles.get(user)).get("name")
        async with self.db.write() as conn:
            e = await self._escalation(conn, staff=(channel, str(thread)))
            if e is None or not await self._first_time(conn, f"slack:{channel}:{ts}", event_id):
                return
            command = text.strip()
            note = note_text(command)
            try:
                if command.lower().startswith("answer:"):  # an FAQ entry, in their language
                    await self.answer(conn, e.id, command[len("answer:"):], user)
                elif note is not None:
                    await self.note(conn, e.id, user, note, external_id=f"{channel}:{ts}",
                                    staff_name=name, mirror=False)
                    await self._job(conn, "post", e.id, {
                        "text": "📝 Kept as an internal note: the customer does not see it."})
                else:
                    files = files_of(event)  # every channel gets at least the links in the text
                    await self.reply(conn, e.id, user, with_links(text, files),
                                     attachments=files,
                                     meta={"staff_name": name, "slack_ts": ts}, mirror=False)
            except DeskRefused as exc:
                await self._job(conn, "post", e.id, {"text": f"⚠️ {cards.mention(user)} {exc}"})
        self.changed()

    # --- Slack listeners -------------------------------------------------------------------

    async def _on_action(self, ack: Callable[..., Awaitable[Any]], body: dict[str, Any],
                         action: dict[str, Any]) -> None:
        await ack()
        user = str(body.get("user", {}).get("id", ""))
        kind, value = action.get("action_id", ""), str(action.get("value", ""))
        try:
            async with self.db.write() as conn:
                await self._act(conn, kind, value, action, user)
        except (DeskRefused, InputError, ValueError, IndexError) as exc:
            log.info("desk action %s %s refused: %s", kind, value[:40], exc)
            await self._tell(body, user, str(exc))
            return
        self.changed()

    async def _act(self, conn: AsyncConnection, kind: str, value: str,
                   action: Mapping[str, Any], user: str) -> str:
        """A button or menu on a card. Menus carry "<escalation id>:<choice>" (the picker,
        snooze); the assignee menu carries the escalation in its block id."""
        selected = str((action.get("selected_option") or {}).get("value", ""))
        if kind == cards.ACTIONS["answer"]:
            esc, _, faq_id = selected.partition(":")
            return await self.answer(conn, id_param(esc, "value"), faq_id, user)
        if kind == cards.ACTIONS["snooze"]:
            esc, _, length = selected.partition(":")
            return await self.do(conn, "snooze", id_param(esc, "value"), user, length)
        if kind == cards.ACTIONS["assign"]:
            esc = str(action.get("block_id", "")).removeprefix("desk-assign-")
            to = str(action.get("selected_user") or "")
            if not SLACK_USER.match(f"<@{to}>"):
                raise DeskRefused("Pick a person to assign it to.")
            return await self.assign(conn, id_param(esc, "block_id"), to, user)
        ids = [id_param(v, "value") for v in value.split(":")]
        if kind == cards.ACTIONS["retry"] and len(ids) == 2:
            return await self.retry(conn, ids[0], ids[1], user)
        verb = kind.removeprefix("desk_")
        if verb not in cards.BUTTON_VERBS:
            raise DeskRefused(f"Unknown action {verb!r}. {HELP}")
        return await self.do(conn, verb, ids[0], user)

    async def _tell(self, body: Mapping[str, Any], user: str, text: str) -> None:
        """Why an action was refused, to the clicker only."""
        channel = (body.get("channel") or {}).get("id")
        if not channel:
            return
        try:
            await call_slack(self.client.chat_postEphemeral(channel=channel, user=user,
                                                            text=text))
        except ChannelError as err:
            log.warning("could not tell %s why: %s", user, err)

    async def _on_command(self, ack: Callable[..., Awaitable[Any]],
                          command: dict[str, Any]) -> None:
        await ack(text=await self.command(str(command.get("text") or ""),
                                          str(command.get("user_id") or "")))

    async def command(self, text: str, user: str) -> str:
        """`/inbox ...` (bot/desk/inbox.py)."""
        return await inbox_command(self, text, user)

    async def _on_save_as_faq(self, ack: Callable[..., Awaitable[Any]],
                              body: dict[str, Any]) -> None:
        """The "Save as FAQ" message shortcut on a staff reply in a card's thread."""
        await ack()
        user = str((body.get("user") or {}).get("id", ""))
        message = body.get("message") or {}
        channel = str((body.get("channel") or {}).get("id", ""))
        thread = str(message.get("thread_ts") or "")
        try:
            if self.drafts is None:
                raise DeskRefused("Saving answers as FAQ drafts is off (FAQ_DRAFTS_FILE).")
            async with self.db.read() as conn:
                e = await self._escalation(conn, staff=(channel, thread)) if thread else None
                if e is None or thread == str(message.get("ts") or ""):
                    raise DeskRefused("Use “Save as FAQ” on a staff reply in an escalation's "
                                      "thread.")
                draft = await self.drafts.draft_from(conn, e, str(message.get("text") or ""),
                                                     self.faq, self.default_language)
            entry_id, problems = await self.drafts.append(draft)
        except DeskRefused as exc:
            await self._tell(body, user, str(exc))
            return
        said = f"📝 {cards.mention(user)} saved this answer as the FAQ draft `{entry_id}` in " \
               f"`{Path(self.drafts.path).name}`: it is not served until an admin moves it " \
               "into the FAQ."
        if problems:
            said += "\nThe linter says: " + "; ".join(problems[:5])
        async with self.db.write() as conn:
            await self._job(conn, "post", e.id, {"text": said})
        self.wake()

    # --- delivery loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        last_check = 0.0
        try:
            await self.post_unposted()
        except Exception:  # tried again at the next start
            log.exception("desk: could not post the earlier escalations")
        while not stop.is_set():
            delivered = 0
            try:
                delivered = await self.poster.deliver_due()
                if loop.time() - last_check >= self.check_every:
                    last_check = loop.time()
                    await self.check_untaken()
                    await self.refresh_waiting()
            except Exception:
                log.exception("desk: delivery loop failed; retrying in 1 s")
                await asyncio.sleep(1)
            if not delivered:
                self.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wakeup.wait(), timeout=0.5)

    async def check_untaken(self) -> int:
        """Re-post escalations nobody took within their team's time, mentioning on-call."""
        now = self.clock()
        routing = self.routing.routing
        count = 0
        async with self.db.write() as conn:
            count += await self._end_snoozes(conn, now)
            rows = (await conn.execute(select(ES.id, ES.team, ES.created_at,
                                              ES.repost_after_minutes).where(
                ES.status == OPEN, ES.reposted_at.is_(None), ES.snoozed_until.is_(None)))).all()
            for r in rows:
                team = routing.team(r.team)
                wait = team.repost_after if r.repost_after_minutes is None \
                    else timedelta(minutes=r.repost_after_minutes)
                due = team.next_open(r.created_at) + wait
                if now < due:
                    continue
                waited = cards.minutes((now - r.created_at).total_seconds())
                mention = f"<!subteam^{team.oncall}>" if team.oncall else "<!here>"
                await self._job(conn, "post", r.id, {
                    "text": f"⏰ {mention} nobody has taken escalation #{r.id} for {waited}.",
                    "broadcast": True})
                await conn.execute(update(Escalation.__table__).where(ES.id == r.id)
                                   .values(reposted_at=now))
                await self._job(conn, "update", r.id)
                count += 1
        if count:
            self.wake()
        return count

    async def _end_snoozes(self, conn: AsyncConnection, now: datetime) -> int:
        """Snoozes that are over: remind whoever has it (or the channel) in the thread."""
        rows = (await conn.execute(select(ES.id, ES.taken_by).where(
            ES.status.in_(LIVE), ES.snoozed_until.is_not(None), ES.snoozed_until <= now)
        )).all()
        for r in rows:
            who = cards.mention(r.taken_by) if r.taken_by else "<!here>"
            await self._job(conn, "post", r.id, {"text": f"⏰ {who} the snooze on #{r.id} is "
                                                         "over.", "broadcast": True})
            await conn.execute(update(Escalation.__table__).where(ES.id == r.id)
                               .values(snoozed_until=None))
            await self._job(conn, "update", r.id)
        return len(rows)

    async def refresh_waiting(self) -> int:
        """Edit the cards of waiting escalations every few minutes, so the waiting time shown
        stays true between state changes (cosmetic: the last refresh is kept in memory)."""
        now = self.clock()
        async with self.db.write() as conn:
            ids = (await conn.execute(select(ES.id).where(
                ES.status == OPEN, ES.staff_thread.is_not(None)))).scalars().all()
            due = [i for i in ids if now - self._refreshed.setdefault(i, now)
                   >= self.refresh_every]
            for esc_id in due:
                await self._job(conn, "update", esc_id)
                self._refreshed[esc_id] = now
        for gone in set(self._refreshed) - set(ids):
            del self._refreshed[gone]
        if due:
            self.wake()
        return len(due)

    # --- helpers ---------------------------------------------------------------------------

    async def _first_time(self, conn: AsyncConnection, key: str, event_id: str | None) -> bool:
        """Record a Slack message as handled; False if it already was (Slack retry)."""
        stmt = _insert_ignore(conn, ChannelState.__table__).returning(ChannelState.__table__.c.key)
        row = (await conn.execute(stmt, {"key": key, "value": {"event_id": event_id},
                                         "updated_at": datetime.now(UTC)})).first()
        return row is not None

"""`python -m bot ...`: serve, FAQ tools, escalations, order import, database upgrade."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from bot.logs import setup_logging
from bot.settings import Settings, load_settings
from core.errors import BotError, ConfigError, InputError

app = typer.Typer(help="storedesk: omnichannel support inbox bot for online stores.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
customer_app = typer.Typer(help="What is held on one customer: export it, erase it, its consent.",
                           no_args_is_help=True)
app.add_typer(customer_app, name="customer")
log = logging.getLogger("bot")


def _faq_app() -> typer.Typer | None:
    try:
        from faq.cli import app as faq_app
    except ImportError:
        return None
    return faq_app


_faq = _faq_app()
if _faq is not None:
    app.add_typer(_faq, name="faq", help="FAQ tools: match, lint, eval, explain, suggest.")


def _settings(**overrides: Any) -> Settings:
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    setup_logging(settings.log_level, json_lines=settings.log_json)
    return settings


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (`pip install storedesk[fast]`): the same
    asyncio API, with sockets, timers and callbacks in C; else asyncio's own."""
    if os.environ.get("STOREDESK_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _run(settings: Settings, *, http: bool, workers: bool) -> None:
    from bot.app import Service

    async def main() -> None:
        try:
            service = Service(settings)
        except BotError as exc:
            raise _fail(str(exc)) from None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, service.stop_event.set)
        await service.run_forever(http=http, workers=workers, freeze=True)

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    except OSError as exc:
        message = _explain(exc)
        raise _fail(message or f"cannot start: {exc}") from None


HostOpt = Annotated[str | None, typer.Option(help="Listen address (HOST)")]
PortOpt = Annotated[int | None, typer.Option(help="Listen port (PORT)")]


@app.command()
def serve(host: HostOpt = None, port: PortOpt = None) -> None:
    """Run everything in one process: HTTP (web chat, webhooks, API), workers, pollers."""
    _run(_settings(host=host, port=port), http=True, workers=True)


@app.command()
def web(host: HostOpt = None, port: PortOpt = None) -> None:
    """Run only the HTTP side: webhooks, web chat and API put messages on the queue."""
    _run(_settings(host=host, port=port), http=True, workers=False)


@app.command()
def worker() -> None:
    """Run only queue workers and the outbox sender (as many processes as you like)."""
    _run(_settings(), http=False, workers=True)


@app.command()
def escalations(
    status: Annotated[str, typer.Option(help="open, taken, resolved, returned or all")] = "open",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document")] = False,
) -> None:
    """List escalated conversations waiting for a person."""
    settings = _settings()
    from bot.db.engine import Database
    from bot.reports import list_escalations

    async def main() -> list[dict[str, Any]]:
        db = Database(settings.database_url)
        try:
            await db.upgrade()
            async with db.read() as conn:
                return await list_escalations(conn, status=status)
        finally:
            await db.close()

    items = asyncio.run(main())
    if as_json:
        typer.echo(json.dumps(items, ensure_ascii=False, indent=2))
        return
    if not items:
        typer.echo(f"no {status} escalations")
        return
    typer.echo(f"{'id':>5}  {'conv':>5}  {'channel':<9} {'lang':<4} {'stage':<13} "
               f"{'reason':<18} {'waiting since':<20} question")
    for e in items:
        question = (e["question"] or "").replace("\n", " ")
        typer.echo(f"{e['id']:>5}  {e['conversation_id']:>5}  {e['channel']:<9} "
                   f"{e['language'] or '-':<4} {e['stage'] or '-':<13} {e['reason']:<18} "
                   f"{e['created_at'][:19]:<20} {question[:60]}")


@app.command()
def queue(
    requeue_dead: Annotated[bool, typer.Option("--requeue-dead",
                                               help="Give dead-lettered messages another round")
                            ] = False,
    requeue_failed: Annotated[str | None, typer.Option(
        "--requeue-failed", metavar="QUEUE",
        help="Give the failed jobs of a queue another round: outbox (replies) or desk "
             "(Slack posts), e.g. after fixing a token")] = None,
) -> None:
    """Queue depth, age, Redis stream state, the latest dead letters, and the jobs of every
    queue by state (JSON)."""
    settings = _settings()
    from bot import jobs
    from bot.db.engine import Database
    from bot.queue import Inbox
    from bot.redis_queue import RedisInbox

    if requeue_failed is not None and requeue_failed not in jobs.REQUEUABLE:
        raise InputError(f"--requeue-failed must be one of {', '.join(jobs.REQUEUABLE)}, "
                         f"not {requeue_failed!r}")

    async def main() -> dict[str, Any]:
        db = Database(settings.database_url)
        inbox = Inbox(db) if not settings.redis_url else RedisInbox(
            db, settings.redis_url, prefix=settings.redis_prefix, consumer="cli")
        try:
            await db.upgrade()
            requeued = await inbox.requeue_dead() if requeue_dead else None
            failed_again = None
            if requeue_failed is not None:
                async with db.write() as conn:
                    failed_again = await jobs.requeue_failed(conn, requeue_failed,
                                                             datetime.now(UTC))
            stats = await inbox.stats()
            async with db.read() as conn:
                stats["queues"] = {name: await table.counts(conn)
                                   for name, table in jobs.QUEUES.items()}
            if requeued is not None:
                stats["requeued"] = requeued
            if failed_again is not None:
                stats["requeued_failed"] = {requeue_failed: failed_again}
            return stats
        finally:
            await inbox.close()
            await db.close()

    typer.echo(json.dumps(asyncio.run(main()), ensure_ascii=False, indent=2, default=str))


@app.command("import-orders")
def import_orders(
    file: Annotated[Path, typer.Argument(help="CSV with email or phone, order_id, total, "
                                               "currency, placed_at, status")],
) -> None:
    """Import order history so lifecycle stages know what customers bought."""
    settings = _settings()
    if not file.exists():
        raise _fail(f"{file} does not exist")
    from bot.db.engine import Database
    from bot.lifecycle import LifecycleRules
    from bot.orders import import_orders as run_import
    from bot.orders import read_orders_csv
    from core.clock import system_clock

    try:
        rows = read_orders_csv(file)
    except InputError as exc:
        raise _fail(str(exc)) from None
    rules = LifecycleRules.from_file(settings.lifecycle_rules)

    async def main() -> int:
        db = Database(settings.database_url)
        try:
            await db.upgrade()
            return await run_import(db, rules, file, rows, clock=system_clock)
        finally:
            await db.close()

    try:
        changes = asyncio.run(main())
    except InputError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"imported {len(rows)} orders from {file}; {changes} stage changes")


def _with_db(settings: Settings, work: Any) -> Any:
    """Run `work(db)` on an upgraded database and close it; a refusal is a one-line error."""
    from bot.db.engine import Database

    async def main() -> Any:
        db = Database(settings.database_url)
        try:
            await db.upgrade()
            return await work(db)
        finally:
            await db.close()

    try:
        return asyncio.run(main())
    except InputError as exc:
        raise _fail(str(exc)) from None


@customer_app.command("export")
def customer_export(
    customer_id: Annotated[int, typer.Argument(help="The customer's id (dashboard, API)")],
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="Write to this file instead")] = None,
) -> None:
    """Everything the database holds on a customer, as one JSON document."""
    from bot.privacy import export_customer

    document = _with_db(_settings(), lambda db: export_customer(db, customer_id))
    text = json.dumps(document, ensure_ascii=False, indent=2)
    if output is None:
        typer.echo(text)
        return
    output.write_text(text + "\n", encoding="utf-8")
    typer.echo(f"customer {customer_id} written to {output}", err=True)


@customer_app.command("delete")
def customer_delete(
    customer_id: Annotated[int, typer.Argument(help="The customer's id (dashboard, API)")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Erase a customer (messages, orders, addresses, merged records); only counts stay."""
    from bot.privacy import erase_customer

    if not yes and not typer.confirm(f"erase customer {customer_id} and all their "
                                     "conversations for good?"):
        raise typer.Exit(1)
    counts = _with_db(_settings(), lambda db: erase_customer(db, customer_id))
    gone = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items() if n)
    typer.echo(f"customer {customer_id} erased: {gone}")


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument()] = "head") -> None:
    """Apply schema migrations (SQLite or PostgreSQL)."""
    settings = _settings()
    from bot.db.engine import Database

    async def main() -> str | None:
        db = Database(settings.database_url)
        try:
            await db.upgrade(revision)
            return await db.current_revision()
        finally:
            await db.close()

    typer.echo(f"database at revision {asyncio.run(main())}")


ChannelOpt = Annotated[str, typer.Option("--channel", help="telegram, slack, whatsapp, "
                                                          "email or webchat")]


def _consent(action: str, customer_id: int, channel: str | None, source: str) -> None:
    settings = _settings()
    from bot.consent import CLI_CHANNELS, record_from_cli

    if channel is not None and channel not in CLI_CHANNELS:
        raise _fail(f"--channel must be one of {', '.join(CLI_CHANNELS)}")

    async def main() -> bool:
        return await record_from_cli(settings.database_url, action, customer_id, channel,
                                     source)

    if not asyncio.run(main()):
        raise _fail(f"customer {customer_id} does not exist")
    where = f" on {channel}" if channel else ""
    typer.echo(f"customer {customer_id}: {action}{where} recorded (source: {source})")


@customer_app.command("opt-in")
def customer_opt_in(customer_id: Annotated[int, typer.Argument(metavar="ID")],
                    channel: ChannelOpt,
                    source: Annotated[str, typer.Option(help="Where the consent was given, "
                                                             "e.g. checkout form")]) -> None:
    """Record the customer's marketing opt-in on one channel (time and source)."""
    _consent("opt-in", customer_id, channel, source)


@customer_app.command("opt-out")
def customer_opt_out(customer_id: Annotated[int, typer.Argument(metavar="ID")],
                     channel: ChannelOpt,
                     source: Annotated[str, typer.Option(help="Who asked")] = "cli") -> None:
    """Record the customer's opt-out of marketing on one channel."""
    _consent("opt-out", customer_id, channel, source)


@customer_app.command("do-not-contact")
def customer_do_not_contact(customer_id: Annotated[int, typer.Argument(metavar="ID")],
                            source: Annotated[str, typer.Option(help="Who asked")] = "cli"
                            ) -> None:
    """Send this customer nothing unprompted any more, transactional messages included."""
    _consent("do-not-contact", customer_id, None, source)


def main() -> None:
    try:
        app()
    except BotError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:
        message = _explain(exc)
        if message is None or logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        typer.echo(f"error: {message}", err=True)
        sys.exit(2)


def _explain(exc: BaseException) -> str | None:
    """The one-line reason for a database or Redis that cannot be used (see LOG_LEVEL=DEBUG
    for the traceback)."""
    from bot.db.engine import explain_connect_error

    url = os.environ.get("DATABASE_URL") or Settings.model_fields["database_url"].default
    if type(exc).__module__.startswith("redis"):
        return (f"cannot use Redis ({type(exc).__name__}: {exc}): is it running? check "
                "REDIS_URL")
    cause: BaseException | None = exc
    while cause is not None:
        message = explain_connect_error(cause, str(url))
        if message is not None:
            return message
        cause = cause.__cause__ or cause.__context__
    return None


if __name__ == "__main__":
    main()

"""What the admin routes read from a query string, and CSV answers.

Periods: today, 7d, 30d, 90d (ending now) or custom from/to dates (UTC days, `to` included).
Every figure answers JSON, or CSV with ?format=csv; a cell that would run as a spreadsheet
formula is quoted.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from aiohttp import web

from bot.admin import queries as mq
from core.errors import InputError

PERIODS = {"today": None, "7d": 7, "30d": 30, "90d": 90}
MAX_CUSTOM_DAYS = 366



def parse_period(query: Mapping[str, str], *, now: datetime | None = None) -> mq.Period:
    """today, 7d, 30d, 90d (ending now) or custom from/to dates (UTC days, `to` included)."""
    now = now or datetime.now(UTC)
    name = query.get("period", "7d")
    if name == "custom" or (name not in PERIODS and ("from" in query or "to" in query)):
        try:
            first = date.fromisoformat(query["from"])
            last = date.fromisoformat(query.get("to") or now.date().isoformat())
        except (KeyError, ValueError):
            raise InputError("custom period needs from=YYYY-MM-DD (and to=YYYY-MM-DD)") from None
        if last < first or (last - first).days >= MAX_CUSTOM_DAYS:
            raise InputError(f"from must be before to, at most {MAX_CUSTOM_DAYS} days apart")
        start = datetime(first.year, first.month, first.day, tzinfo=UTC)
        end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
        return mq.Period(start, end, "hour" if (end - start).days <= 2 else "day")
    if name not in PERIODS:
        raise InputError(f"period must be one of {', '.join(PERIODS)} or custom")
    days = PERIODS[name]
    if days is None:
        return mq.Period(now.replace(hour=0, minute=0, second=0, microsecond=0), now, "hour")
    return mq.Period(now - timedelta(days=days), now, "day")


def int_param(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    try:
        value = int(query.get(name, default))
    except ValueError:
        raise InputError(f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise InputError(f"{name} must be between {lo} and {hi}")
    return value



def _cell(value: Any) -> Any:
    # a cell starting with = + - @ would run as a formula in a spreadsheet
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def csv_response(rows: list[dict[str, Any]], columns: list[str], name: str) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return web.Response(text=out.getvalue(), content_type="text/csv", charset="utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})


def wants_csv(request: web.Request) -> bool:
    fmt = request.query.get("format", "json")
    if fmt not in ("json", "csv"):
        raise InputError("format must be json or csv")
    return fmt == "csv"

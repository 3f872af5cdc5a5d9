"""Billing periods: calendar months in an account's IANA time zone (R3).

A period is named ``"YYYY-MM"`` and runs from midnight of the 1st, local time,
to midnight of the next 1st. Instants are stored and compared in UTC, so a
daylight-saving change inside the month moves nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def period_of(instant: datetime, tz: str) -> str:
    """The period that contains ``instant`` in zone ``tz``."""
    local = instant.astimezone(zone(tz))
    return f"{local.year:04d}-{local.month:02d}"


def _month_start(year: int, month: int, tz: str) -> datetime:
    return datetime(year, month, 1, tzinfo=zone(tz)).astimezone(UTC)


def period_bounds(period: str, tz: str) -> tuple[datetime, datetime]:
    """UTC start (inclusive) and end (exclusive, the next renewal) of ``period``."""
    year, month = (int(part) for part in period.split("-"))
    start = _month_start(year, month, tz)
    end = _month_start(year + month // 12, month % 12 + 1, tz)
    return start, end


def next_renewal(instant: datetime, tz: str) -> datetime:
    """The first renewal instant strictly after ``instant``."""
    return period_bounds(period_of(instant, tz), tz)[1]

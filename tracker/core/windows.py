"""Backfill windows: account-local moments parsed, and periods split as the Data API accepts them.

No I/O. ``get.calls_report`` takes at most three calendar months per request; ``windows`` cuts a
period into contiguous pieces of whole seconds that each fit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from tracker.core.synthesis import TIME_FORMAT

_SECOND = timedelta(seconds=1)


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime:
    """``YYYY-MM-DD HH:MM:SS`` (or a bare date: its first or last second), account-local."""
    text = text.strip()
    for fmt in (TIME_FORMAT, "%Y-%m-%d %H:%M", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(text, fmt)
        except ValueError:
            continue
        if fmt == "%Y-%m-%d" and end_of_day:
            moment += timedelta(days=1) - _SECOND
        return moment
    raise ValueError(f"not a time: expected 'YYYY-MM-DD HH:MM:SS', got {text!r}")


def _months_later(moment: datetime, months: int) -> datetime:
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    days = [31, 29 if year % 4 == 0 and (year % 100 or year % 400 == 0) else 28, 31, 30, 31, 30,
            31, 31, 30, 31, 30, 31][month - 1]
    return moment.replace(year=year, month=month, day=min(moment.day, days))


def windows(date_from: datetime, date_till: datetime) -> list[tuple[datetime, datetime]]:
    """Split ``[date_from, date_till]`` (inclusive, whole seconds) into contiguous windows the
    Data API accepts: none longer than three calendar months."""
    start, till = date_from.replace(microsecond=0), date_till.replace(microsecond=0)
    result = []
    while start <= till:
        end = min(till, _months_later(start, 3) - _SECOND)
        result.append((start, end))
        start = end + _SECOND
    return result

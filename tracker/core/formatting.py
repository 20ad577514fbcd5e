"""Numbers, phones, dates and durations as people read them, per language (Babel, phonenumbers).

Pure functions: the page's templates call them through filters bound to the viewer's language
and the account's time zone (``crm.timezone``) and region (``crm.phone_region``).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import phonenumbers
from babel import dates, numbers, units

LANGUAGES = ("en", "ru")  # the first is the fallback


def phone(raw: str | None, region: str = "RU") -> str:
    """``79020790876`` → ``+7 902 079-08-76``; what libphonenumber cannot read, as it came."""
    if not raw:
        return ""
    text = str(raw).strip()
    digits = "".join(ch for ch in text if ch.isascii() and ch.isdigit())
    candidates = [text]
    if not text.startswith("+") and len(digits) >= 11:
        candidates.insert(0, "+" + digits)  # UIS writes E.164 digits without the plus
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number,
                                              phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return text


def moment(timestamp: float | None, tz: ZoneInfo, lang: str) -> str:
    """Date and time: ``4 дек. 2026 г., 21:05:03`` / ``Dec 4, 2026, 9:05:03 PM``."""
    if not timestamp:
        return ""
    return dates.format_datetime(datetime.fromtimestamp(timestamp, tz), "medium", locale=lang)


def clock(timestamp: float | None, tz: ZoneInfo, lang: str) -> str:
    """The time of day only: ``21:05:03`` / ``9:05:03 PM``."""
    if not timestamp:
        return ""
    return dates.format_time(datetime.fromtimestamp(timestamp, tz), "medium", locale=lang)


def day(timestamp: float, tz: ZoneInfo, lang: str) -> str:
    """The date only: ``4 дек. 2026 г.`` / ``Dec 4, 2026``."""
    return dates.format_date(datetime.fromtimestamp(timestamp, tz), "medium", locale=lang)


def number(value: float | int | None, lang: str) -> str:
    """``12 345`` / ``12,345``; one decimal at most."""
    if value is None:
        return ""
    return numbers.format_decimal(value, "#,##0.#", locale=lang)


def percent(share: float | None, lang: str) -> str:
    """``24 %`` / ``24%``."""
    if share is None:
        return ""
    return numbers.format_percent(share, locale=lang)


def duration(seconds: float | None, lang: str) -> str:
    """A duration rounded down to its two largest units: ``42 с``, ``9 мин 35 с``, ``2 days``."""
    if seconds is None:
        return ""
    left = int(max(0.0, seconds))
    parts: list[str] = []
    for unit, size in (("duration-day", 86400), ("duration-hour", 3600),
                       ("duration-minute", 60), ("duration-second", 1)):
        if left >= size or (size == 1 and not parts):
            amount, left = divmod(left, size)
            parts.append(units.format_unit(amount, unit, length="short", locale=lang))
        elif parts:
            break  # "2 h 5 s" reads as a typo: stop at the first empty unit after a full one
        if len(parts) == 2:
            break
    return " ".join(parts)


def best_language(accept_language: str | None) -> str | None:
    """The first of ``LANGUAGES`` an ``Accept-Language`` header asks for (by its q weights)."""
    if not accept_language:
        return None
    wanted: list[tuple[float, int, str]] = []
    for position, item in enumerate(accept_language.split(",")[:20]):
        tag, _, params = item.strip().partition(";")
        weight = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                weight = float(params[2:])
            except ValueError:
                weight = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and weight > 0:
            wanted.append((-weight, position, primary))
    return min(wanted)[2] if wanted else None


def N_(message: str) -> str:  # noqa: N802 (the name Babel's extractor looks for)
    """Mark ``message`` for the catalogue; it is translated where it is shown."""
    return message

"""Phone number normalisation with libphonenumber: UIS digits, CRM free text, E.164 out."""

from __future__ import annotations

import phonenumbers


def to_e164(raw: str | None, region: str = "RU") -> str | None:
    """``+79991234567`` for anything libphonenumber can read; the trimmed input otherwise.

    UIS writes numbers as E.164 digits without ``+`` (``79991234567``); retailCRM stores what a
    person typed (``8 (999) 123-45-67``). Short internal numbers and anonymous callers are
    returned as they came, so nothing is lost. ``None`` or blank gives ``None``.
    """
    if raw is None:
        return None
    text = raw.strip()
    if not text:
        return None
    candidates = [text]
    digits = "".join(ch for ch in text if ch.isdigit())
    if not text.startswith("+") and len(digits) >= 11:
        candidates.insert(0, "+" + digits)
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return text


def to_digits(raw: str | None, region: str = "RU") -> str | None:
    """The UIS form of a number: E.164 digits without ``+`` (``79991234567``), or None."""
    e164 = to_e164(raw, region)
    if e164 is None:
        return None
    digits = "".join(ch for ch in e164 if ch.isdigit())
    return digits or None

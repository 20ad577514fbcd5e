"""Parse and normalise UIS notifications into ``Notification`` values (no I/O).

UIS substitutes template variables as JSON literals, but a GET notification carries them as query
strings, a variable that does not apply may arrive as ``null`` or as its own unreplaced text
(``{{employee_id}}``), and vendors are vague: both readings are accepted wherever they differ.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from tracker.core import bodies
from tracker.core.catalogue import EVENTS
from tracker.errors import BodyError, RejectedNotification

# Where UIS sends notifications: this prefix, then ``uis.webhook_secret`` (the routing request
# hangs below it, ``.../<secret>/route``). Defined once for the web layer, the CLI and the tools.
WEBHOOK_PREFIX = "/webhooks/uis/"

_UNREPLACED = re.compile(r"^\{\{\s*[A-Za-z_]+\s*\}\}$")
_MAX_ID = 2**63 - 1
_DIGITS = re.compile(r"-?[0-9]{1,20}")  # ASCII only: str.isdigit() also accepts '²'


@dataclass(frozen=True)
class Notification:
    """One UIS notification, typed and normalised. Absent variables are None (or empty)."""

    event: str
    session_id: int
    dedupe_key: str
    at: float | None = None  # notification_time as a UTC timestamp
    direction: str | None = None
    contact_phone: str | None = None
    contact_name: str | None = None
    virtual_phone: str | None = None
    employee_id: int | None = None
    employee_name: str | None = None
    employee_ids: tuple[int, ...] = ()
    leg_id: int | None = None
    talk_seconds: int | None = None
    total_seconds: int | None = None
    wait_seconds: int | None = None
    external_id: str | None = None
    last_talked_employee_id: int | None = None
    file_link: str | None = None


def event_name(fields: Mapping[str, Any]) -> str:
    """The ``event`` constant of a notification; raises when it is missing or not a string."""
    value = fields.get("event")
    if value is None or _absent(value):
        raise RejectedNotification("missing: every template must carry a constant event name",
                                   "event")
    if not isinstance(value, str):
        raise RejectedNotification("must be a string", "event")
    return value


def is_known_event(name: str) -> bool:
    return name in EVENTS


def canonical(fields: Mapping[str, Any]) -> str:
    """The notification as compact JSON with sorted keys: what is journaled and hashed."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dedupe_key(fields: Mapping[str, Any], text: str | None = None) -> str:
    """Identical notifications (a re-delivery) share this key; different ones never do.
    ``text`` is ``canonical(fields)`` when the caller has it already."""
    text = canonical(fields) if text is None else text
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def parse(fields: Mapping[str, Any], tz: ZoneInfo, text: str | None = None) -> Notification:
    """Validate and normalise a known event's fields; ``tz`` is the account's time zone;
    ``text`` is ``canonical(fields)`` when the caller has it already.

    Raises ``RejectedNotification`` naming the first bad field.
    """
    event = event_name(fields)
    if not is_known_event(event):
        raise RejectedNotification(f"unknown event {event!r}", "event")
    session_id = _int(fields, "call_session_id", required=True)
    assert session_id is not None
    direction = _str(fields, "direction")
    if direction is not None:
        direction = direction.lower()
        if direction not in ("in", "out"):
            # UIS also knows internal/transit directions; tracker records only in and out.
            direction = "in" if direction in ("incoming", "inbound") else (
                "out" if direction in ("outgoing", "outbound") else None
            )
    if event == "outgoing_call":
        direction = "out"
    return Notification(
        event=event,
        session_id=session_id,
        dedupe_key=dedupe_key(fields, text),
        at=_time(fields, "notification_time", tz),
        direction=direction,
        contact_phone=_phone(fields, "contact_phone_number"),
        contact_name=_str(fields, "contact_full_name"),
        virtual_phone=_phone(fields, "virtual_phone_number"),
        employee_id=_int(fields, "employee_id"),
        employee_name=_str(fields, "employee_full_name"),
        employee_ids=_int_list(fields, "employee_ids"),
        leg_id=_int(fields, "leg_id"),
        talk_seconds=_int(fields, "talk_time_duration"),
        total_seconds=_int(fields, "total_time_duration"),
        wait_seconds=_int(fields, "wait_time_duration"),
        external_id=_str(fields, "external_id"),
        last_talked_employee_id=_int(fields, "last_talked_employee_id"),
        file_link=_str(fields, "file_link"),
    )


def _absent(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        text = value.strip()
        return text == "" or text.lower() == "null" or bool(_UNREPLACED.match(text))
    return False


def _int(fields: Mapping[str, Any], name: str, *, required: bool = False) -> int | None:
    value = fields.get(name)
    if _absent(value):
        if required:
            raise RejectedNotification("missing", name)
        return None
    if isinstance(value, bool):
        raise RejectedNotification(f"must be an integer, got {json.dumps(value)}", name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and _DIGITS.fullmatch(value.strip()):
        value = int(value.strip())
    if not isinstance(value, int):
        shown = json.dumps(value, ensure_ascii=False, default=str)[:80]
        raise RejectedNotification(f"must be an integer, got {shown}", name)
    if not 0 <= value <= _MAX_ID:
        raise RejectedNotification("out of range", name)
    return value


def _str(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if _absent(value):
        return None
    if isinstance(value, bool):
        raise RejectedNotification("must be a string", name)
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise RejectedNotification("must be a string", name)
    if len(value) > 2048:
        raise RejectedNotification("too long (over 2048 characters)", name)
    return value


def _phone(fields: Mapping[str, Any], name: str) -> str | None:
    value = _str(fields, name)
    if value is not None and len(value) > 64:
        raise RejectedNotification("too long for a phone number", name)
    return value


def _int_list(fields: Mapping[str, Any], name: str) -> tuple[int, ...]:
    value = fields.get(name)
    if _absent(value):
        return ()
    if isinstance(value, str):
        text = value.strip()
        try:
            value = json.loads(text) if text.startswith("[") else text.split(",")
        except ValueError:
            raise RejectedNotification("must be an array of integers", name) from None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or len(value) > 1000:
        raise RejectedNotification("must be an array of integers", name)
    result = []
    for item in value:
        parsed = _int({name: item}, name)
        if parsed is not None:
            result.append(parsed)
    return tuple(result)


_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S")


def _time(fields: Mapping[str, Any], name: str, tz: ZoneInfo) -> float | None:
    text = _str(fields, name)
    if text is None:
        return None
    text = text.strip()
    moment: datetime | None = None
    try:
        moment = datetime.fromisoformat(text)  # C-fast; reads "2019-12-16 14:40:47.234" too
    except ValueError:
        pass
    for fmt in _TIME_FORMATS if moment is None else ():
        try:
            moment = datetime.strptime(text, fmt)
            break
        except ValueError:
            continue
    if moment is None:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise RejectedNotification(
                f"not a time: expected 'YYYY-MM-DD HH:MM:SS[.fff]', got {text[:40]!r}", name
            ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


# -- variables UIS left unfilled ----------------------------------------------------------------
# A template naming a variable the event does not offer gets the variable's own text back,
# ``{{name}}``: quoted in the template it is a string value (absent for ``parse``), unquoted it
# makes the body invalid JSON. Kept apart from the decoders so that any decoder can use it.

UNFILLED = "tracker_unfilled"  # marker field: the variables a decoder found bare and nulled
_BARE = re.compile(r"(?<=[:\[,])(\s*)\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}(?=\s*[,\]}])")


def fill_bare_placeholders(text: str) -> tuple[str, list[str]]:
    """``text`` with every bare ``{{name}}`` standing for a JSON value replaced by ``null``,
    and the names replaced. For a body that failed to decode: a placeholder inside a string
    is left alone unless it looks like a value there too (``"a: {{b}}, c"``), which only a
    body that was not JSON anyway can contain."""
    names: list[str] = []

    def null(match: re.Match[str]) -> str:
        names.append(match.group(2))
        return match.group(1) + "null"

    return _BARE.sub(null, text), names


def unfilled_variables(fields: Mapping[str, Any]) -> list[str]:
    """The variables of a decoded notification that UIS left unfilled: values that are a
    quoted ``{{name}}``, and those a decoder nulled (``UNFILLED``), in body order."""
    names = [str(key) for key, value in fields.items()
             if isinstance(value, str) and _UNREPLACED.match(value.strip())]
    marked = fields.get(UNFILLED)
    if isinstance(marked, list):
        names += [str(name) for name in marked if str(name) not in names]
    return names



def decode_object_with_placeholders(raw: bytes) -> dict[str, Any]:
    """A notification's JSON object (``bodies.decode_object``), also when UIS left bare
    ``{{name}}`` placeholders standing for values: those become null and their names ride
    along under ``UNFILLED``. Anything else wrong is refused as ``bodies`` refuses it."""
    try:
        return bodies.decode_object(raw)
    except BodyError as exc:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise exc from None
        filled, names = fill_bare_placeholders(text)
        if not names:
            raise
        try:
            data = bodies.decode_object(filled.encode("utf-8"))
        except BodyError:
            raise exc from None
        data[UNFILLED] = names
        return data

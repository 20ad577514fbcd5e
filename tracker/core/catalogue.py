"""The UIS notification catalogue: which events tracker understands and the template to paste.

This is plain data shared by the webhook parser (which variables each event carries), the README
(the templates a user pastes into UIS) and the UIS simulator (which renders them the way UIS
does: every ``{{name}}`` replaced by a JSON literal). Each template names only variables UIS
documents for that event (docs/reference-notes.md, "Notification variables"): one it does not
offer may be left unfilled.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class NotificationType:
    """One UIS notification a user configures, with the variables its template carries."""

    event: str
    ui_name_ru: str
    ui_name_en: str
    variables: tuple[str, ...]


_COMMON = ("call_session_id", "notification_time")

NOTIFICATIONS: tuple[NotificationType, ...] = (
    NotificationType(
        "incoming_call",
        "Входящий звонок на виртуальный номер",
        "Inbound call on a virtual phone number",
        _COMMON + ("virtual_phone_number", "contact_phone_number", "contact_full_name"),
    ),
    NotificationType(
        "waiting_answer",
        "Ожидание ответа",
        "Waiting for the answer",
        _COMMON
        + (
            "direction",
            "virtual_phone_number",
            "contact_phone_number",
            "employee_id",
            "employee_full_name",
            "leg_id",
            "external_id",
        ),
    ),
    NotificationType(
        "talk_started",
        "Начало разговора",
        "Talk started",
        _COMMON
        + (
            "direction",
            "virtual_phone_number",
            "contact_phone_number",
            "employee_id",
            "employee_full_name",
            "leg_ids",
            "external_id",
        ),
    ),
    NotificationType(
        "talk_finished",
        "Окончание разговора",
        "Talk finished",
        _COMMON + ("employee_id", "talk_time_duration", "leg_ids"),
    ),
    NotificationType(
        "call_finished",
        "Завершение звонка",
        "Call finished",
        _COMMON
        + (
            "direction",
            "virtual_phone_number",
            "contact_phone_number",
            "employee_id",
            "employee_full_name",
            "talk_time_duration",
            "total_time_duration",
            "wait_time_duration",
            "external_id",
            "last_talked_employee_id",
        ),
    ),
    NotificationType(
        "lost_call",
        "Потерянный звонок",
        "Lost call",
        # No direction or total_time_duration: UIS offers neither for a lost call.
        _COMMON + ("virtual_phone_number", "contact_phone_number", "employee_ids",
                   "wait_time_duration"),
    ),
    NotificationType(
        "outgoing_call",
        "Исходящий звонок",
        "Outbound call",
        _COMMON
        + (
            "virtual_phone_number",
            "contact_phone_number",
            "employee_id",
            "employee_full_name",
        ),  # no external_id: UIS offers none for an outbound call's start
    ),
    NotificationType(
        "call_recorded",
        "Записанный разговор",
        "Call recording completed",
        _COMMON + ("employee_id", "file_link", "file_duration"),
    ),
)

EVENTS: tuple[str, ...] = tuple(n.event for n in NOTIFICATIONS)
BY_EVENT: dict[str, NotificationType] = {n.event: n for n in NOTIFICATIONS}


def template_body(event: str) -> str:
    """The JSON body template to paste into UIS for ``event`` (variables left unquoted)."""
    lines = [f'  "event": "{event}"']
    lines += [f'  "{name}": {{{{{name}}}}}' for name in BY_EVENT[event].variables]
    return "{\n" + ",\n".join(lines) + "\n}"


_VARIABLE = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def render(template: str, values: dict[str, Any]) -> str:
    """Substitute ``{{name}}`` the way UIS does: each value as a JSON literal, missing as null."""
    return _VARIABLE.sub(lambda m: json.dumps(values.get(m.group(1)), ensure_ascii=False), template)

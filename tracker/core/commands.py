"""Outbox intents: what a transition asks to be delivered, as plain frozen data."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Cards first: a pop-up or hangup is worth nothing late, a history upload can wait.
PRIORITY = {"popup": 0, "hangup": 0, "upload": 1}


@dataclass(frozen=True)
class Popup:
    """Open the caller's card for one employee (retailCRM ``telephony/call/event``)."""

    employee_id: int
    kind: str = "popup"


@dataclass(frozen=True)
class Hangup:
    """Close the cards of these employees, if they were opened."""

    employee_ids: tuple[int, ...]
    status: str  # "answered" | "no answered"
    kind: str = "hangup"


@dataclass(frozen=True)
class Upload:
    """Put the call into retailCRM's history (``telephony/calls/upload``)."""

    result: str  # "answered" | "no answer"
    kind: str = "upload"


Command = Popup | Hangup | Upload


def payload(command: Command) -> dict[str, Any]:
    """The JSON-ready payload stored in the outbox row."""
    data = asdict(command)
    data.pop("kind")
    return data

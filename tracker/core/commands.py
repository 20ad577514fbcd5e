"""Outbox intents: what a transition asks to be delivered, as plain frozen data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
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
    # What the upload says, fixed when the call became final (``Call.upload_snapshot``): later
    # notifications may enrich the stored call, never what is (or will be) uploaded. Rows
    # queued before it existed carry no snapshot and are built from the stored call.
    snapshot: Mapping[str, Any] | None = field(default=None, compare=False)
    kind: str = "upload"


Command = Popup | Hangup | Upload


def payload(command: Command) -> dict[str, Any]:
    """The JSON-ready payload stored in the outbox row."""
    data = asdict(command)
    data.pop("kind")
    if data.get("snapshot") is None:
        data.pop("snapshot", None)
    return data

"""What the two retailCRM callbacks share: parameters, the clientId check, users, the request log.

retailCRM calls ``makeCallUrl`` and ``changeUserStatusUrl`` with query or form parameters (which
one is unconfirmed, so both are read; the form wins). ``clientId`` is the only proof that a
request comes from our account: it is compared in constant time, and masked in the request log.
A request with a wrong one is counted as a failed attempt of its address and logged only as a
fixed-size summary (web/failures.py throttles and logs those).
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from quart import Response, g, request

from tracker.config import Employee, Settings
from tracker.context import Context
from tracker.core import bodies
from tracker.db import requestlog
from tracker.db.store import Store
from tracker.errors import BodyError
from tracker.logs import MASK


@dataclass(frozen=True)
class Reply:
    """An answer to retailCRM: the HTTP status, the JSON body, and the outcome to log."""

    status: int
    body: dict[str, Any] = field(default_factory=dict)
    outcome: str = "ok"

    @classmethod
    def error(cls, status: int, error: str, message: str, **extra: Any) -> Reply:
        """A refusal: ``{"error": mnemonic, "message": ...}`` plus ``extra`` fields."""
        return cls(status, {"error": error, "message": message, **extra}, error)


class Refused(Exception):
    """Raised by the sans-I/O helpers to stop with ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.body.get("message", reply.outcome))
        self.reply = reply


async def read_params() -> dict[str, str]:
    """Query parameters, overlaid with form fields (or a flat JSON object) of a POST."""
    params = {k: v for k, v in request.args.items()}
    if request.method == "POST":
        if request.mimetype == "application/json":
            raw = await request.get_data(cache=True, as_text=False, parse_form_data=False)
            try:
                data = bodies.decode_object(raw) if raw.strip() else {}
            except BodyError as exc:
                raise Refused(Reply.error(400, "invalid_body", str(exc))) from None
            params.update({k: "" if v is None else str(v) for k, v in data.items()
                           if not isinstance(v, dict | list)})
        else:
            params.update((await request.form).to_dict())
    return params


def client_id_ok(settings: Settings, given: str | None) -> bool:
    """Constant-time comparison with ``crm.client_id``; a missing one never matches."""
    if not given:
        return False
    return hmac.compare_digest(given.encode(), settings.crm.client_id.reveal().encode())


def masked(params: Mapping[str, str]) -> dict[str, Any]:
    """``params`` fit for the request log: ``clientId`` (and any ``apiKey``) hidden, each name
    and value cut at 256 characters, and no more than 8 KB in all."""
    return requestlog.mask({requestlog.cap(k, 64): MASK if k in ("clientId", "apiKey") and v
                            else requestlog.cap(v) for k, v in list(params.items())[:30]})


def find_employee(store: Store, code: str | None, user_id: str | None) -> Employee | None:
    """The mapped employee for a retailCRM user: by extension ``code`` first, then ``userId``.

    Raises ``Refused`` (400) when neither is given or ``userId`` is not a number.
    """
    code = (code or "").strip()
    user_text = (user_id or "").strip()
    if not code and not user_text:
        raise Refused(Reply.error(400, "missing_parameter", "give code or userId of the user",
                                  field="userId"))
    crm_user_id: int | None = None
    if user_text:
        if not (user_text.isascii() and user_text.isdigit()):
            raise Refused(Reply.error(400, "invalid_parameter",
                                      f"userId must be a number, got {user_text[:40]!r}",
                                      field="userId"))
        crm_user_id = int(user_text)
    if crm_user_id is not None and crm_user_id > 2**63 - 1:
        return None  # no SQLite integer is that large, so no employee has it
    return store.employee_by_code(code) or store.employee_by_crm_user_id(crm_user_id)


def unmapped(ctx: Context, code: str | None, user_id: str | None, what: str) -> Reply:
    """Record a mapping warning and build the 422 answer for a user with no employee."""
    who = f"user {user_id or '?'} (code {code or '?'})"
    subject = f"user:{user_id or ''}/code:{code or ''}"
    message = f"retailCRM {who} has no [[employees]] entry: {what}"
    ctx.store.warn("unmapped_crm_user", subject, message)
    return Reply.error(422, "unmapped_user", message)


def respond(ctx: Context, route: str, params: Mapping[str, str], reply: Reply,
            started: float) -> Response:
    """Log the request (clientId masked) and turn ``reply`` into the HTTP answer."""
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    if reply.outcome == "forbidden":
        # A wrong clientId: web/failures.py counts it against the caller's address and logs a
        # summary of it (size and address, not what it sent), a bounded number a minute.
        g.auth_failed = True
        g.refusal = {"source": "crm", "method": f"{request.method} {route}",
                     "outcome": reply.outcome, "status": reply.status,
                     "size": (request.content_length or 0) + len(request.query_string),
                     "duration_ms": duration_ms}
    else:
        ctx.store.log_request(source="crm", method=f"{request.method} {route}",
                              params=masked(params), outcome=reply.outcome,
                              status=reply.status, duration_ms=duration_ms)
    return Response(json.dumps(reply.body, ensure_ascii=False), status=reply.status,
                    content_type="application/json; charset=utf-8")

"""UIS Data API and Call API client (JSON-RPC 2.0) over the shared ``httpx.AsyncClient``.

``code`` in a UIS error is only a group; ``data.mnemonic`` is the reason. Retryable: transport
failures, -32029 ``limit_exceeded`` (held off for as long as the refusal's own
``error.data.metadata.limits`` say) and -32603 internal errors; everything else is permanent
until the configuration changes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from tracker.clients.throttle import Gate
from tracker.config import UisSettings
from tracker.core.payloads import record_url, uis_date
from tracker.core.ratelimit import error_limits, limit_exceeded_wait
from tracker.errors import PermanentDelivery, RetryableDelivery

_RETRYABLE_CODES = {-32029, -32603}


@dataclass(frozen=True)
class Recording:
    """What the legs report says about a finished session's talk."""

    url: str | None
    talked_employee_ids: tuple[int, ...]


class UisError(PermanentDelivery):
    """A permanent JSON-RPC error; ``mnemonic`` is UIS's reason, ``field`` the parameter it
    names (a dot path), when it names one."""

    def __init__(self, message: str, *, mnemonic: str, code: int | None,
                 field: str | None = None) -> None:
        super().__init__(message, detail=mnemonic)
        self.mnemonic = mnemonic
        self.code = code
        self.field = field


class UisClient:
    """Typed calls to the UIS Data API and Call API."""

    def __init__(self, http: httpx.AsyncClient, settings: UisSettings,
                 gate: Gate | None = None) -> None:
        self._http = http
        self._settings = settings
        self._ids = itertools.count(1)
        self.last_limits: dict[str, Any] = {}
        self.gate = gate  # the minute/day budgets; every call waits its turn there

    async def data(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call a Data API method; returns its ``result``."""
        return await self._call(self._settings.data_api_url, method, params)

    async def call_api(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call a Call API method; returns its ``result``."""
        return await self._call(self._settings.call_api_url, method, params)

    async def find_recording(
        self,
        session_id: int,
        *,
        started_at: float,
        finished_at: float,
        tz: ZoneInfo,
        prefer_employee_id: int | None,
    ) -> Recording:
        """The record of the talked leg (the preferred employee's if several talked)."""
        result = await self.data(
            "get.call_legs_report",
            {
                "date_from": uis_date(started_at - 3600, tz),
                "date_till": uis_date(finished_at + 3600, tz),
                "filter": {
                    "filters": [
                        {"field": "call_session_id", "operator": "=", "value": session_id},
                        {"field": "is_talked", "operator": "=", "value": True},
                    ],
                    "condition": "and",
                },
                "fields": ["id", "call_session_id", "employee_id", "is_talked", "call_records",
                           "start_time", "duration"],
            },
        )
        legs = [leg for leg in result.get("data") or [] if leg.get("is_talked", True)]
        talked = tuple(leg["employee_id"] for leg in legs if leg.get("employee_id") is not None)
        ordered = sorted(legs, key=lambda leg: leg.get("employee_id") != prefer_employee_id)
        for leg in ordered:
            records = leg.get("call_records") or []
            if records:
                # The id in the link is the one the row gives (the legs report documents
                # .../talk/{call_session_id}/{record}), in that report's form.
                owner = leg.get("call_session_id")
                owner = owner if isinstance(owner, int) and not isinstance(owner, bool) \
                    else session_id
                url = record_url(self._settings.media_url, owner, str(records[0]), report="legs")
                return Recording(url, talked)
        return Recording(None, talked)

    # -- deals (features/deals.py; method names in docs/reference-notes.md "UIS: deals") -------

    async def upload_deals_history(self, deals: list[dict[str, Any]]) -> dict[str, Any]:
        """``upload.deals_history``: rows of deal history (one per stage reached)."""
        return await self.data("upload.deals_history", {"deals": deals})

    async def create_deal_contacts(self, contacts: list[dict[str, Any]]) -> dict[str, Any]:
        """``create.deal_contacts``: the CRM's contacts deals refer to by ``ext_id``."""
        return await self.data("create.deal_contacts", {"contacts": contacts})

    async def save_sales_funnel(self, params: dict[str, Any], *, exists: bool) -> dict[str, Any]:
        """``create.sales_funnel`` (or ``update.sales_funnel`` once UIS has it)."""
        return await self.data("update.sales_funnel" if exists else "create.sales_funnel", params)

    async def create_deal_employees(self, employees: list[dict[str, Any]]) -> dict[str, Any]:
        """The CRM's responsible employees (method name unconfirmed, see the notes)."""
        return await self.data("create.deal_employees", {"employees": employees})

    async def _call(self, url: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        body = {
            "jsonrpc": "2.0",
            "id": next(self._ids),
            "method": method,
            "params": {"access_token": self._settings.access_token.reveal(), **params},
        }
        if self.gate is not None:
            await self.gate.wait_turn(method)
        try:
            response = await self._http.post(url, json=body, timeout=self._settings.timeout_seconds)
        except httpx.TimeoutException as exc:
            raise RetryableDelivery(f"UIS {method}: timed out") from exc
        except httpx.HTTPError as exc:
            raise RetryableDelivery(f"UIS {method}: {type(exc).__name__}: {exc}") from exc
        if self.gate is not None and response.status_code in (429, 503):
            self.gate.note_answer(throttled=True)
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryableDelivery(f"UIS {method}: HTTP {response.status_code}",
                                    status=response.status_code, detail=response.text[:300])
        try:
            answer = response.json()
        except ValueError:
            raise RetryableDelivery(f"UIS {method}: HTTP {response.status_code}, not JSON",
                                    status=response.status_code,
                                    detail=response.text[:300]) from None
        if not isinstance(answer, dict):
            raise RetryableDelivery(f"UIS {method}: unexpected answer shape")
        error = answer.get("error")
        if error is not None:
            error = error if isinstance(error, dict) else {"message": str(error)}
            raw_data = error.get("data")
            data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
            mnemonic = str(data.get("mnemonic") or "unknown")
            code = error.get("code")
            message = f"UIS {method}: {mnemonic}: {error.get('message', '')}".strip()
            if code in _RETRYABLE_CODES:
                wait = None
                if code == -32029:
                    # The refusal's own error.data.metadata.limits say which budget ran out
                    # and when it resets; the last answer's are older.
                    limits = error_limits(data)
                    if limits is not None:
                        self.last_limits = dict(limits)
                    wait = limit_exceeded_wait(limits if limits is not None
                                               else self.last_limits)
                    if self.gate is not None:
                        self.gate.note_answer(throttled=True, retry_after_seconds=wait)
                raise RetryableDelivery(message, detail=mnemonic, retry_after_seconds=wait)
            field = data.get("field")
            raise UisError(message, mnemonic=mnemonic, code=code if isinstance(code, int) else None,
                           field=field if isinstance(field, str) else None)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise RetryableDelivery(f"UIS {method}: answer without a result")
        limits = (result.get("metadata") or {}).get("limits")
        if isinstance(limits, dict):
            self.last_limits = limits
            if self.gate is not None:
                self.gate.note_answer(throttled=False, limits=limits)
        return result

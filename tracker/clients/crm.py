"""retailCRM API client over the process's shared ``httpx.AsyncClient``.

Wire format as retailCRM's official clients send it: form-encoded bodies whose nested values are
one field holding a JSON string, the key in ``X-API-KEY``. Answers are classified into the error
tree: transport failures, timeouts, 429 and 5xx (HTML bodies included) are retryable; a 4xx
without JSON (or ``Account does not exist.``) is ``AccountNotFound``, permanent: ``crm.url`` is
wrong; other refusals are permanent and carry retailCRM's ``errorMsg``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from tracker.clients.throttle import Gate
from tracker.config import CrmSettings
from tracker.errors import DeliveryError, PermanentDelivery, RetryableDelivery


class AccountNotFound(PermanentDelivery):
    """``crm.url`` names no retailCRM account (a non-JSON 4xx, or ``Account does not exist.``)."""


@dataclass(frozen=True)
class CrmAnswer:
    """A successful answer and what was sent, for the call's timeline."""

    status: int
    body: dict[str, Any]
    request: dict[str, Any]
    text: str


class CrmClient:
    """Typed calls to one retailCRM account."""

    def __init__(self, http: httpx.AsyncClient, settings: CrmSettings,
                 gate: Gate | None = None) -> None:
        self._http = http
        self._settings = settings
        self.gate = gate  # the account's rate limit; every request waits its turn there
        self._base = f"{settings.url.rstrip('/')}/api/{settings.api_version}/"

    async def send_call_event(self, event: dict[str, Any]) -> CrmAnswer:
        """``telephony/call/event``: open (type in/out) or close (hangup) a card."""
        return await self.post("telephony/call/event", {"event": event})

    async def upload_calls(self, calls: list[dict[str, Any]]) -> CrmAnswer:
        """``telephony/calls/upload``: up to 50 history items."""
        return await self.post("telephony/calls/upload", {"calls": calls})

    async def responsible_manager(self, phone: str, *, ignore_status: bool) -> CrmAnswer:
        """``telephony/manager``: the customer's responsible manager (``manager`` absent when
        retailCRM knows none). Booleans go as ``1``/``0``, as retailCRM reads them."""
        return await self.get("telephony/manager", {"phone": phone, "details": 1,
                                                    "ignoreStatus": int(ignore_status)})

    # -- customers, tasks, orders (delivery/crmwork.py) ---------------------------------------

    async def find_customers(self, params: dict[str, Any]) -> CrmAnswer:
        """``GET customers`` with query parameters as retailCRM names them
        (``filter[name]``, ``filter[externalIds][]``, ``limit``)."""
        return await self.get("customers", params)

    async def create_customer(self, customer: dict[str, Any], site: str = "") -> CrmAnswer:
        """``customers/create``: answers ``{"success": true, "id": N}``."""
        return await self.post("customers/create", _with_site({"customer": customer}, site))

    async def find_tasks(self, params: dict[str, Any]) -> CrmAnswer:
        """``GET tasks`` (``filter[text]``, ``filter[performers][]``, ``limit``)."""
        return await self.get("tasks", params)

    async def create_task(self, task: dict[str, Any], site: str = "") -> CrmAnswer:
        """``tasks/create``: answers ``{"success": true, "id": N}``."""
        return await self.post("tasks/create", _with_site({"task": task}, site))

    async def edit_task(self, task_id: int, task: dict[str, Any]) -> CrmAnswer:
        """``tasks/{id}/edit`` (``complete: true`` completes it)."""
        return await self.post(f"tasks/{task_id}/edit", {"task": {"id": task_id, **task}})

    async def find_orders(self, params: dict[str, Any]) -> CrmAnswer:
        """``GET orders`` (``filter[externalIds][]``, ``limit``)."""
        return await self.get("orders", params)

    async def create_order(self, order: dict[str, Any], site: str = "") -> CrmAnswer:
        """``orders/create``: answers ``{"success": true, "id": N, "order": {…}}``."""
        return await self.post("orders/create", _with_site({"order": order}, site))
    # -- orders as deals (features/deals.py) --------------------------------------------------

    async def orders_history(self, *, since_id: int | None = None, start_date: str | None = None,
                             end_date: str | None = None, limit: int = 100,
                             page: int = 1) -> CrmAnswer:
        """``orders/history``: order changes after history entry ``since_id`` (oldest first),
        or from ``start_date`` (``Y-m-d H:i:s``) when there is no cursor yet."""
        params: dict[str, Any] = {"limit": limit, "page": page}
        if since_id is not None:
            params["filter[sinceId]"] = since_id
        if start_date is not None:
            params["filter[startDate]"] = start_date
        if end_date is not None:
            params["filter[endDate]"] = end_date
        return await self.get("orders/history", params)

    async def orders_by_ids(self, ids: list[int]) -> CrmAnswer:
        """``orders?filter[ids][]=…``: up to 100 full orders."""
        return await self.get("orders", {"filter[ids][]": ids, "limit": 100})

    async def order_statuses(self) -> CrmAnswer:
        """``reference/statuses``: every order status with its group and ordering."""
        return await self.get("reference/statuses")

    async def status_groups(self) -> CrmAnswer:
        """``reference/status-groups``: the groups with their ordering and statuses."""
        return await self.get("reference/status-groups")

    async def users(self, page: int = 1) -> CrmAnswer:
        """``users``: one page (100) of the account's users."""
        return await self.get("users", {"limit": 100, "page": page})

    async def post(self, endpoint: str, fields: dict[str, Any]) -> CrmAnswer:
        """POST form fields (dicts and lists are sent as JSON text) to ``endpoint``."""
        form = {
            key: (json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list)
                  else str(value))
            for key, value in fields.items()
        }
        request = {"method": "POST", "endpoint": endpoint, "form": fields}
        return await self._send(request, lambda: self._http.post(
            self._base + endpoint, data=form, headers=self._headers(),
            timeout=self._settings.timeout_seconds,
        ))

    async def get(self, endpoint: str, params: dict[str, Any] | None = None) -> CrmAnswer:
        request = {"method": "GET", "endpoint": endpoint, "params": params or {}}
        return await self._send(request, lambda: self._http.get(
            self._base + endpoint, params=params, headers=self._headers(),
            timeout=self._settings.timeout_seconds,
        ))

    def _headers(self) -> dict[str, str]:
        return {"X-API-KEY": self._settings.api_key.reveal()}

    async def _send(self, request: dict[str, Any], send: Any) -> CrmAnswer:
        try:
            return await self._exchange(request, send)
        except DeliveryError as exc:
            exc.request = request  # the call's timeline shows what a failed attempt sent
            raise

    async def _exchange(self, request: dict[str, Any], send: Any) -> CrmAnswer:
        endpoint = request["endpoint"]
        if self.gate is not None:
            await self.gate.wait_turn(endpoint)
        try:
            response: httpx.Response = await send()
        except httpx.TimeoutException as exc:
            raise RetryableDelivery(
                f"retailCRM {endpoint}: timed out ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise RetryableDelivery(f"retailCRM {endpoint}: {type(exc).__name__}: {exc}") from exc
        text = response.text[:4000]
        try:
            body = response.json()
        except ValueError:
            body = None
        status = response.status_code
        if self.gate is not None:
            self.gate.note_answer(throttled=status in (429, 503),
                                  retry_after_seconds=_retry_after(response))
        if status == 429 or status >= 500:
            raise RetryableDelivery(
                f"retailCRM {endpoint}: HTTP {status}",
                status=status,
                detail=_message(body, text),
                retry_after_seconds=_retry_after(response),
            )
        if not isinstance(body, dict) and 400 <= status < 500:
            # retailCRM answers every API route with JSON; a 4xx page without JSON comes from
            # in front of it: a POST to an account that does not exist gets 405 text/html (the
            # official PHP client maps exactly that to "Account does not exist."). Retrying
            # cannot help until crm.url is fixed.
            raise AccountNotFound(
                f"retailCRM account not found at {self._settings.url} (HTTP {status} without a "
                f"JSON answer for {endpoint}): check crm.url", status=status, detail=text[:300],
            )
        if not isinstance(body, dict):
            raise RetryableDelivery(
                f"retailCRM {endpoint}: HTTP {status} without a JSON answer", status=status,
                detail=text[:300],
            )
        if status >= 400 and _message(body, text).rstrip(".") == "Account does not exist":
            raise AccountNotFound(
                f"retailCRM account not found at {self._settings.url} (HTTP {status}: "
                f"{_message(body, text)}): check crm.url", status=status, detail=text,
            )
        if status >= 400 or body.get("success") is False:
            raise PermanentDelivery(
                f"retailCRM {endpoint}: HTTP {status}: {_message(body, text)}",
                status=status, detail=text,
            )
        return CrmAnswer(status=status, body=body, request=request, text=text)


def _with_site(fields: dict[str, Any], site: str) -> dict[str, Any]:
    return {**fields, "site": site} if site else fields


def _message(body: Any, text: str) -> str:
    if isinstance(body, dict):
        message = str(body.get("errorMsg") or "")
        errors = body.get("errors")
        if errors:
            message = f"{message} {json.dumps(errors, ensure_ascii=False)}".strip()
        if message:
            return message[:1000]
    return " ".join(text.split())[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None

"""The outbox handlers of the CRM work a call implies: customers, call-back tasks, their completion,
orders, and the attribution lookup in front of the history upload.

Each handler has the outbox's signature ``(row, payload) -> Done | Later`` and runs on the lane of
the caller's number, so the rows of one number are delivered one at a time, in order. Nothing is
made twice: a customer is looked up before it is created and carries an ``externalId`` derived
from the number, so a create re-sent after a crash or a lost answer is found (retailCRM refuses
the repeat); an order carries the call's ``externalId`` likewise; a task create whose earlier
attempt may have reached retailCRM (``sent_at`` set) is first looked for by its commentary.
What was found or created is committed together with the row's status (``Done.effects``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from tracker.clients.crm import CrmAnswer, CrmClient
from tracker.clients.uis import UisClient
from tracker.config import Settings
from tracker.core import crmwork as plan
from tracker.core.payloads import uis_date
from tracker.db import crmwork as db
from tracker.db.store import Store
from tracker.delivery import batching
from tracker.delivery.dispatcher import BatchHandler, Done, Handler, Later
from tracker.errors import DeliveryError, PermanentDelivery

log = logging.getLogger(__name__)

Outcome = Done | Later


class CrmWork:
    """The handlers; ``handlers()`` is what the outbox registers, ``wrap_upload`` goes around
    its ``upload`` handler when attribution is on."""

    def __init__(self, store: Store, settings: Settings, crm: CrmClient, uis: UisClient) -> None:
        self._store = store
        self._settings = settings
        self._crm = crm
        self._uis = uis
        self._tz = ZoneInfo(settings.crm.timezone)

    def handlers(self) -> dict[str, Handler]:
        """Outbox kind -> handler, for every kind ``core.crmwork.plan`` enqueues."""
        return {plan.CUSTOMER: self.customer, plan.TASK: self.task, plan.REACH: self.reach,
                plan.ORDER: self.order}

    def wrap_upload(self, upload: BatchHandler) -> BatchHandler:
        """The history upload with the call's attribution looked up first (stored with the call,
        where ``payloads.upload_item`` takes ``source`` and ``clientId`` from)."""

        async def upload_with_attribution(row: dict[str, Any], payload: dict[str, Any],
                                          slot: batching.Slot | None) -> Outcome:
            if row.get("call_id") is not None:
                await self.attribution(row["call_id"], row["created_at"])
            return await upload(row, payload, slot)

        return upload_with_attribution

    # -- attribution ---------------------------------------------------------------------------

    async def attribution(self, call_id: int, fallback_at: float) -> dict[str, Any]:
        """Where the call came from, from UIS's ``get.calls_report`` (looked up once per call;
        {} when the report says nothing, the lookup fails or attribution is off)."""
        if not self._settings.attribution.enabled:
            return {}
        known = db.attribution(self._store, call_id)
        if known is not None:
            return known
        call = self._store.call_row(call_id)
        if call is None:
            return {}
        started = call["started_at"] or fallback_at
        finished = call["finished_at"] or fallback_at
        try:
            result = await self._uis.data("get.calls_report", {
                "date_from": uis_date(started - 3600, self._tz),
                "date_till": uis_date(finished + 3600, self._tz),
                "filter": {"field": "id", "operator": "=", "value": call_id},
                "fields": list(plan.REPORT_FIELDS),
                # the source is known from the first ring: a session UIS has not closed yet
                # (a lost call's upload leaves before call_finished) is in the report too
                "include_ongoing_calls": True,
            })
        except DeliveryError as exc:
            log.warning("call %s: attribution lookup failed, sending without: %s", call_id, exc)
            return {}
        row = next((r for r in result.get("data") or []
                    if isinstance(r, dict) and r.get("id") == call_id), None)
        if row is None:
            return {}  # not in the report (yet): the next handler of this call asks again
        value = plan.attribution_of(row)
        with self._store.transaction():
            db.set_attribution(self._store, call_id, value)
        return value

    # -- customers -----------------------------------------------------------------------------

    async def customer(self, row: dict[str, Any], payload: dict[str, Any]) -> Outcome:
        number, phone, call_id = payload["number"], payload["phone"], payload["call_id"]
        known = db.customer_for(self._store, number)
        if known is not None:
            return Done("dropped", f"retailCRM customer {known['customer_id']} is known for "
                        "this number")
        # An earlier attempt may have created it (a crash, a lost answer): look by our marker.
        by_marker = row.get("sent_at") is not None or row["attempts"] > 0
        found = await self._find_customer(number, by_marker=by_marker)
        if found is not None:
            customer, answer = found
            return Done.sent(answer, f"found retailCRM customer {customer['id']}",
                             effects=self._remember(number, customer, "found", call_id))
        employee = self._store.employee_by_uis_id(payload.get("employee_id"))
        source = (await self.attribution(call_id, row["created_at"])).get("source")
        body = plan.customer_body(phone, number,
                                  manager_id=employee.crm_user_id if employee else None,
                                  source=source)
        self._store.set_sent_at(row["id"], time.time())  # committed before the request leaves
        try:
            answer = await self._crm.create_customer(body, self._settings.crm.site)
        except PermanentDelivery as exc:
            if exc.status == 400:  # a create sent again after a crash is refused: look again
                again = await self._find_customer(number, by_marker=True)
                if again is not None:
                    customer, found_answer = again
                    return Done.sent(found_answer, f"retailCRM already had customer "
                                     f"{customer['id']} (an earlier attempt made it)",
                                     effects=self._remember(number, customer, "created",
                                                            call_id))
            raise
        customer_id = _id(answer)
        created = {"id": customer_id, "managerId": body.get("managerId")}
        return Done.sent(answer, f"created retailCRM customer {customer_id}",
                         effects=self._remember(number, created, "created", call_id))

    async def _find_customer(self, number: str, *, by_marker: bool
                             ) -> tuple[dict[str, Any], CrmAnswer] | None:
        if by_marker:
            answer = await self._crm.find_customers(
                {"filter[externalIds][]": plan.external_id(number), "limit": 20})
            for customer in _customers(answer):
                if customer.get("externalId") == plan.external_id(number):
                    return customer, answer
        # retailCRM has no phone filter: ``filter[name]`` also searches phones; match digits.
        answer = await self._crm.find_customers({"filter[name]": number, "limit": 20})
        for customer in _customers(answer):
            if plan.same_number(customer.get("phones"), number) \
                    or customer.get("externalId") == plan.external_id(number):
                return customer, answer
        return None

    def _remember(self, number: str, customer: dict[str, Any], origin: str,
                  call_id: int) -> Callable[[], None]:
        manager = customer.get("managerId")
        return lambda: db.remember_customer(
            self._store, number, int(customer["id"]),
            manager_id=manager if isinstance(manager, int) else None, origin=origin,
            call_id=call_id, at=time.time())

    # -- tasks ---------------------------------------------------------------------------------

    async def task(self, row: dict[str, Any], payload: dict[str, Any]) -> Outcome:
        number, phone, call_id = payload["number"], payload["phone"], payload["call_id"]
        at = payload.get("at") or row["created_at"]
        employee = self._store.employee_by_uis_id(payload.get("employee_id"))
        note = plan.miss_note(call_id, at, self._tz, employee.code if employee else None)
        existing = db.open_task(self._store, number)
        if existing is not None:
            if f"UIS call {call_id})" in (existing["commentary"] or "") \
                    or f"UIS call {call_id}," in (existing["commentary"] or ""):
                return Done("dropped", f"task {existing['task_id']} already names this call")
            commentary = f"{existing['commentary']}\n{note}"
            answer = await self._crm.edit_task(existing["task_id"], {"commentary": commentary})
            return Done.sent(answer, f"added to open task {existing['task_id']}",
                             effects=lambda: db.add_miss(self._store, existing["id"],
                                                         commentary))
        customer = db.customer_for(self._store, number)
        customer_id = customer["customer_id"] if customer else None
        candidates = plan.performers(customer["manager_id"] if customer else None,
                                     employee.crm_user_id if employee else None,
                                     self._settings.tasks.fallback_performer_id)
        if not candidates:
            self._store.warn("task_performer", "tasks.fallback_performer_id",
                             f"missed call {call_id} from {phone} got no task: nobody is known to "
                             "perform it (set tasks.fallback_performer_id)")
            return Done("dropped", "no performer: no manager, no rung employee, no "
                        "tasks.fallback_performer_id")
        if row.get("sent_at") is not None:
            found = await self._find_task(phone, call_id)
            if found is not None:
                task, answer = found
                return Done.sent(answer, f"retailCRM already had task {task['id']} (an earlier "
                                 "attempt made it)", effects=self._remember_task(
                                     number, int(task["id"]), call_id,
                                     int(task.get("performerId") or candidates[0]),
                                     str(task.get("commentary") or note), at))
        refused: list[str] = []
        for performer in candidates:
            body = plan.task_body(phone, note, at, self._tz, performer, customer_id)
            self._store.set_sent_at(row["id"], time.time())
            try:
                answer = await self._crm.create_task(body)
            except PermanentDelivery as exc:
                if exc.status == 400 and "performer" in (exc.detail or "").lower() \
                        and performer != candidates[-1]:
                    self._store.warn("task_performer", f"retailCRM user {performer}",
                                     f"retailCRM refused user {performer} as a task performer "
                                     f"(missing or inactive); the task went to the next one "
                                     f"({exc.detail[:200] if exc.detail else ''})")
                    refused.append(str(performer))
                    continue
                raise
            task_id = _id(answer)
            note_text = f"created task {task_id} for user {performer}"
            if refused:
                note_text += f" (refused: {', '.join(refused)})"
            if customer_id is None:
                note_text += ", without a customer"
            return Done.sent(answer, note_text, effects=self._remember_task(
                number, task_id, call_id, performer, note, at))
        raise PermanentDelivery("no performer retailCRM accepts")  # pragma: no cover

    async def _find_task(self, phone: str, call_id: int
                         ) -> tuple[dict[str, Any], CrmAnswer] | None:
        answer = await self._crm.find_tasks({"filter[text]": plan.task_text(phone),
                                             "limit": 100})
        tasks = answer.body.get("tasks")
        for task in tasks if isinstance(tasks, list) else []:
            if isinstance(task, dict) and f"UIS call {call_id}" in str(task.get("commentary")) \
                    and not task.get("complete"):
                return task, answer
        return None

    def _remember_task(self, number: str, task_id: int, call_id: int, performer: int,
                       commentary: str, at: float) -> Callable[[], None]:
        return lambda: db.remember_task(self._store, number, task_id, call_id=call_id,
                                        performer_id=performer, commentary=commentary, at=at)

    async def reach(self, row: dict[str, Any], payload: dict[str, Any]) -> Outcome:
        number, call_id = payload["number"], payload["call_id"]
        at = payload.get("at") or row["created_at"]
        existing = db.open_task(self._store, number)
        if existing is None:
            return Done("dropped", "no open call-back task for this number")
        if existing["opened_at"] > at:
            return Done("dropped", f"task {existing['task_id']} is for a later miss")
        employee = self._store.employee_by_uis_id(payload.get("employee_id"))
        note = plan.reach_note(call_id, at, existing["opened_at"], self._tz,
                               employee.code if employee else None,
                               payload.get("direction") or "in")
        commentary = f"{existing['commentary']}\n{note}"
        answer = await self._crm.edit_task(existing["task_id"],
                                           {"complete": True, "commentary": commentary})
        return Done.sent(answer, f"completed task {existing['task_id']}: {note}",
                         effects=lambda: db.complete_task(self._store, existing["id"],
                                                          call_id=call_id, at=at))

    # -- orders --------------------------------------------------------------------------------

    async def order(self, row: dict[str, Any], payload: dict[str, Any]) -> Outcome:
        number, call_id = payload["number"], payload["call_id"]
        customer = db.customer_for(self._store, number)
        if customer is None or customer["origin"] != "created" or customer["call_id"] != call_id:
            return Done("dropped", "not a new caller (tracker did not create the customer on "
                        "this call)")
        external = plan.order_external_id(call_id)
        if row.get("sent_at") is not None:
            found = await self._find_order(external)
            if found is not None:
                return Done.sent(found, "retailCRM already had the order")
        employee = self._store.employee_by_uis_id(payload.get("employee_id"))
        source = (await self.attribution(call_id, row["created_at"])).get("source")
        body = plan.order_body(call_id, payload["phone"], customer["customer_id"],
                               method=self._settings.orders.method,
                               manager_id=employee.crm_user_id if employee else None,
                               source=source)
        self._store.set_sent_at(row["id"], time.time())
        try:
            answer = await self._crm.create_order(body, self._settings.crm.site)
        except PermanentDelivery as exc:
            if exc.status == 400:
                again = await self._find_order(external)
                if again is not None:
                    return Done.sent(again, "retailCRM already had the order")
            raise
        return Done.sent(answer, f"created order {_id(answer)}")

    async def _find_order(self, external: str) -> CrmAnswer | None:
        answer = await self._crm.find_orders({"filter[externalIds][]": external, "limit": 20})
        orders = answer.body.get("orders")
        for order in orders if isinstance(orders, list) else []:
            if isinstance(order, dict) and order.get("externalId") == external:
                return answer
        return None


def _customers(answer: CrmAnswer) -> list[dict[str, Any]]:
    customers = answer.body.get("customers")
    return [c for c in customers if isinstance(c, dict) and isinstance(c.get("id"), int)] \
        if isinstance(customers, list) else []


def _id(answer: CrmAnswer) -> int:
    value = answer.body.get("id")
    if not isinstance(value, int) or isinstance(value, bool):
        raise PermanentDelivery(f"retailCRM {answer.request.get('endpoint')}: answered success "
                                "without an id", status=answer.status, detail=answer.text)
    return value

"""Outbox handlers that write retailCRM's orders into UIS: the structure, then deal batches.

Two kinds, both on the lane ``deals`` (so a funnel change reaches UIS before deals that use
it, and batches keep their order):

- ``deals_structure``: one UIS structure call the loop decided on (``create.sales_funnel`` /
  ``update.sales_funnel``, the responsible employees); the payload is the call.
- ``deals_upload``: a batch of orders and the transitions to send. The handler builds the rows
  from the store at delivery time (the latest amount and contact), makes sure UIS has their
  contacts (``create.deal_contacts``, only for contacts that changed), then sends one
  ``upload.deals_history``. When UIS refuses a parameter of a batch of several orders, the
  batch is split into one row per order, so the refused deal becomes the only dead letter and
  the others go (a refused key or method is one dead letter for the whole batch).

Every UIS call first leaves live call work its share of the minute and day budgets
(``reconcile.minute_reserve`` / ``day_reserve``): below the reserve the row waits and resumes.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from tracker.clients.uis import UisClient, UisError
from tracker.config import Settings
from tracker.core import deals as model
from tracker.db import deals as db
from tracker.db.store import Store
from tracker.delivery.dispatcher import Done, Handler
from tracker.errors import RetryableDelivery

log = logging.getLogger(__name__)

PRIORITY = 5  # below pop-ups (0) and call uploads (1): it may always wait
INVALID_PARAMS = -32602  # the JSON-RPC group of UIS's refusals of a parameter's value


def handlers(store: Store, uis: UisClient, settings: Settings) -> dict[str, Handler]:
    """The outbox kinds of the deals loop, to add to the outbox's handler mapping."""
    sender = _Sender(store, uis, settings)
    return {"deals_structure": sender.structure, "deals_upload": sender.upload}


def enqueue_structure(store: Store, method: str, params: dict[str, Any], note: str,
                      now: float) -> int:
    return store.enqueue(None, "deals_structure", PRIORITY,
                         {"method": method, "params": params, "note": note}, now, lane=db.LANE)


def enqueue_upload(store: Store, batch: list[dict[str, Any]], now: float) -> int:
    """``batch``: ``[{"order_id": …, "transitions": [ids]}]``."""
    return store.enqueue(None, "deals_upload", PRIORITY, {"orders": batch}, now, lane=db.LANE)


class _Sender:
    def __init__(self, store: Store, uis: UisClient, settings: Settings) -> None:
        self._store, self._uis, self._settings = store, uis, settings
        self._limits_id = 0
        self._limits_seen_at = 0.0

    def _leave_live_share(self) -> None:
        """Raise ``RetryableDelivery`` while the budgets are down to the reserves."""
        limits = self._uis.last_limits
        if id(limits) != self._limits_id:  # a fresh answer: its resets count from now
            self._limits_id, self._limits_seen_at = id(limits), time.monotonic()
        elapsed = time.monotonic() - self._limits_seen_at
        reserve = self._settings.reconcile
        for left, reset, keep, name in (
                ("day_remaining", "day_reset", reserve.day_reserve, "day"),
                ("minute_remaining", "minute_reset", reserve.minute_reserve, "minute")):
            remaining, seconds = limits.get(left), limits.get(reset)
            if not isinstance(remaining, int) or remaining > keep:
                continue
            wait = (float(seconds) if isinstance(seconds, int | float) else 60.0) - elapsed
            if wait > 0:
                raise RetryableDelivery(
                    f"UIS {name} budget down to {remaining} (the reserve for live call work is "
                    f"{keep}): deals wait {wait:.0f}s", retry_after_seconds=max(1.0, wait))

    async def structure(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
        self._leave_live_share()
        method, params = payload["method"], payload["params"]
        result = await self._uis.data(method, params)
        return Done("delivered", payload.get("note", ""), {"method": method, **params},
                    str(result.get("data")))

    async def upload(self, row: dict[str, Any], payload: dict[str, Any]) -> Done:
        batch = payload["orders"]
        stages = db.stages(self._store)
        rows: list[dict[str, Any]] = []
        contacts: dict[str, dict[str, Any]] = {}
        sent_transitions: list[int] = []
        for item in batch:
            facts = db.order(self._store, item["order_id"])
            if facts is None or facts["skipped_reason"]:
                continue
            chosen = db.transitions(self._store, item["transitions"])
            for transition in chosen:
                if transition["status"] and transition["status"] not in stages:
                    log.warning("order %s: status %r is not in retailCRM's reference (unknown "
                                "status group): that transition is not sent", facts["order_id"],
                                transition["status"])
            rows += model.deal_rows(facts, chosen, stages, communication_id=facts["call_id"])
            sent_transitions += [t["id"] for t in chosen]
            item_contact = model.contact(facts)
            if item_contact is not None:
                contacts[item_contact["ext_id"]] = item_contact
        known = db.structure_digests(self._store, "contact")
        changed = [c for ext_id, c in contacts.items() if known.get(ext_id) != model.digest(c)]
        order_ids = [item["order_id"] for item in batch]
        if not rows:
            return Done("dropped", "nothing of these orders can be sent to UIS")
        try:
            if changed:
                self._leave_live_share()
                await self._uis.create_deal_contacts(changed)
            self._leave_live_share()
            result = await self._uis.upload_deals_history(rows)
        except UisError as exc:
            # Only a refused parameter (-32602: a row's field) is about one deal; a refused key
            # or method refuses every deal alike, and splitting would only multiply it.
            if len(batch) > 1 and exc.code == INVALID_PARAMS:
                return self._split(batch, exc)
            raise

        def uploaded() -> None:
            now = time.time()
            for item in changed:
                db.set_structure(self._store, "contact", item["ext_id"], model.digest(item),
                                 item, now)
            db.mark_uploaded(self._store, order_ids, sent_transitions, now)

        return Done("delivered", f"{len(rows)} deal rows of {len(batch)} orders",
                    {"method": "upload.deals_history", "deals": rows}, str(result.get("data")),
                    effects=uploaded)

    def _split(self, batch: list[dict[str, Any]], exc: UisError) -> Done:
        def split() -> None:
            now = time.time()
            for item in batch:
                enqueue_upload(self._store, [item], now)

        log.warning("UIS refused a batch of %d deals (%s): sending them one by one",
                    len(batch), exc)
        return Done("dropped", f"UIS refused the batch ({exc}); split into {len(batch)} rows",
                    effects=split)

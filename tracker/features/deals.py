"""The deals loop: retailCRM's order history read with a cursor, turned into UIS deal uploads.

Every ``deals.poll_seconds`` (and at start) the loop first mirrors retailCRM's structure: the
order statuses (by status group, in retailCRM's order) as the stages of one UIS funnel, the
users as responsibles; only what changed since the last pass goes out. Then it reads
``orders/history`` after the cursor (``filter[sinceId]``, oldest first, 100 a page) and, per
page, in ONE transaction: records each entry that changes a deal (a status reached, or other
deal data such as the amount), saves the orders' facts, links each order to the call that led
to it (the customer's last call within 30 days before the order), enqueues the batches for the
outbox (``delivery/deals.py``) and moves the cursor past the page. A restart re-reads nothing
that was committed and a re-read page adds nothing (entries are unique by id), so no deal row
is enqueued twice. Full orders are fetched (``orders?filter[ids][]``) only when the entries do
not carry what a deal needs: a creation entry carries the whole order, a status change of a
known order needs nothing more.

retailCRM requests wait at the account's gate with a priority below every call action, so a
pop-up is never held up by the loop. Faults never end it: a failed pass is logged and the next
one continues from the cursor.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import trio

from tracker.clients.crm import CrmClient
from tracker.clients.throttle import priority_var
from tracker.config import Settings
from tracker.core import deals as model
from tracker.core import phones
from tracker.db import deals as db
from tracker.db.store import Store
from tracker.delivery import deals as delivery
from tracker.errors import DeliveryError

log = logging.getLogger(__name__)

PAGE_LIMIT = 100  # retailCRM's largest page
MAX_PAGES_PER_PASS = 50  # a long backlog is read over several passes, the structure refreshed
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
CURSOR = "since_id"
START_BEFORE = timedelta(days=1)


@dataclass
class Tally:
    """What a pass (or a backfill) read and did, updated as it goes."""

    pages: int = 0
    entries: int = 0
    orders: int = 0  # orders whose deals were enqueued
    transitions: int = 0
    skipped: int = 0
    fetched: int = 0  # full orders fetched
    requests: int = 0
    caught_up: bool = False
    skipped_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DealsStatistics:
    passes: int
    entries_total: int
    requests_total: int
    last_error: str | None
    last_pass_at: float | None


class DealsLoop:
    """Reads retailCRM's order history and enqueues deal uploads. ``run()`` is the daemon's
    loop; ``read_history`` one read over any window (backfill)."""

    def __init__(self, store: Store, settings: Settings, crm: CrmClient, *,
                 wake: Callable[[], None] = lambda: None) -> None:
        self._store, self._settings, self._crm, self._wake = store, settings, crm, wake
        self._tz = ZoneInfo(settings.crm.timezone)
        self._poked = trio.Event()
        self._passed = trio.Event()
        self._in_pass = False
        self._passes = self._entries = self._requests = 0
        self._last_error: str | None = None
        self._last_pass_at: float | None = None

    def statistics(self) -> DealsStatistics:
        return DealsStatistics(self._passes, self._entries, self._requests, self._last_error,
                               self._last_pass_at)

    def poke(self) -> None:
        """Start the next pass now instead of at the end of ``poll_seconds``."""
        self._poked.set()

    async def wait_next_pass(self) -> None:
        """Start a pass now and block until a pass that began after this call has ended
        (tests; bound it with ``trio.fail_after``)."""
        if self._in_pass:
            await self._passed.wait()
        target = self._passed
        self.poke()
        await target.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A pass at start and every ``deals.poll_seconds``; nothing when deals are off."""
        task_status.started()
        if not self._settings.deals.enabled:
            return
        while True:
            tally = await self.pass_once()
            # A backlog longer than one pass goes on at once; a caught-up or failed pass waits.
            backlog = not tally.caught_up and self._last_error is None
            with trio.move_on_after(0.1 if backlog else self._settings.deals.poll_seconds):
                await self._poked.wait()
            self._poked = trio.Event()

    async def pass_once(self) -> Tally:
        """Sync the structure, then read the history after the cursor; errors are logged
        (and shown on the status page), never raised."""
        tally = Tally()
        self._in_pass = True
        self._passes += 1
        self._last_pass_at = time.time()
        start = db.get_state(self._store, "start_date")
        if start is None:
            # The daemon's history starts a day before deals were turned on (the orders just
            # taken are usually wanted too); anything older is the backfill's.
            start = (datetime.now(self._tz) - START_BEFORE).strftime(TIME_FORMAT)
            with self._store.transaction():
                db.set_state(self._store, "start_date", start)
        try:
            await self.sync_structure(tally)
            await self.read_history(tally, cursor_key=CURSOR, start_date=start)
        except DeliveryError as exc:
            self._note_error(str(exc))
            log.warning("deals: pass stopped, the next one continues from the cursor: %s", exc)
        except Exception as exc:  # a bug must not end the loop
            self._note_error(f"internal error: {exc!r}")
            log.exception("deals: pass failed")
        else:
            if self._last_error is not None:
                self._note_error(None)
        finally:
            self._wake()
            self._in_pass = False
            self._passed.set()
            self._passed = trio.Event()
        return tally

    def _note_error(self, message: str | None) -> None:
        self._last_error = message
        with self._store.transaction():
            db.set_state(self._store, "last_error", message)

    async def _get(self, tally: Tally, call: Any) -> dict[str, Any]:
        token = priority_var.set(delivery.PRIORITY + 1)  # behind every call action
        try:
            answer = await call
        finally:
            priority_var.reset(token)
        tally.requests += 1
        self._requests += 1
        body: dict[str, Any] = answer.body
        return body

    # -- the structure ------------------------------------------------------------------------

    async def sync_structure(self, tally: Tally) -> None:
        """Mirror retailCRM's statuses and users in UIS (only what changed is enqueued)."""
        deals = self._settings.deals
        groups = (await self._get(tally, self._crm.status_groups())).get("statusGroups") or {}
        statuses = (await self._get(tally, self._crm.order_statuses())).get("statuses") or {}
        users: list[dict[str, Any]] = []
        page = 1
        while True:
            body = await self._get(tally, self._crm.users(page))
            users += [u for u in body.get("users") or [] if isinstance(u, dict)]
            pages = (body.get("pagination") or {}).get("totalPageCount") or 1
            if page >= pages or page >= 100:
                break
            page += 1
        params = model.funnel_params(groups, statuses, deals.won_status_groups,
                                     deals.lost_status_groups)
        stages = model.stage_map(groups, statuses, deals.won_status_groups,
                                 deals.lost_status_groups)
        now = time.time()
        with self._store.transaction():
            old = db.structure_digest(self._store, "funnel", model.FUNNEL_EXT_ID)
            if old != model.digest(params):
                method = "update.sales_funnel" if old else "create.sales_funnel"
                delivery.enqueue_structure(self._store, method, params,
                                           f"funnel of {len(stages)} retailCRM statuses", now)
                db.set_structure(self._store, "funnel", model.FUNNEL_EXT_ID,
                                 model.digest(params), params, now)
                db.save_stages(self._store, stages, now)
                log.info("deals: retailCRM's statuses changed: %s the UIS funnel (%d stages)",
                         "updating" if old else "creating", len(stages))
            known = db.structure_digests(self._store, "responsible")
            changed = [r for r in map(model.responsible, users)
                       if r is not None and known.get(r["ext_id"]) != model.digest(r)]
            if changed:
                delivery.enqueue_structure(self._store, "create.deal_employees",
                                           {"employees": changed},
                                           f"{len(changed)} retailCRM users", now)
                for item in changed:
                    db.set_structure(self._store, "responsible", item["ext_id"],
                                     model.digest(item), item, now)
                log.info("deals: %d retailCRM users new or changed: sent as responsibles",
                         len(changed))

    # -- the history --------------------------------------------------------------------------

    async def read_history(self, tally: Tally, *, cursor_key: str, start_date: str | None = None,
                           end_date: str | None = None, max_pages: int = MAX_PAGES_PER_PASS,
                           on_page: Callable[[Tally], None] = lambda tally: None) -> Tally:
        """Read pages after the cursor ``cursor_key`` until caught up or ``max_pages``."""
        for _ in range(max_pages):
            raw = db.get_state(self._store, cursor_key)
            since = int(raw) if raw is not None and raw.isdigit() else None
            body = await self._get(tally, self._crm.orders_history(
                since_id=since, start_date=start_date if since is None else None,
                end_date=end_date, limit=PAGE_LIMIT))
            entries = [e for e in body.get("history") or [] if isinstance(e, dict)
                       and isinstance(e.get("id"), int)]
            entries.sort(key=lambda e: e["id"])
            tally.pages += 1
            if entries:
                await self._take_page(entries, since, cursor_key, tally)
            on_page(tally)
            pages = (body.get("pagination") or {}).get("totalPageCount") or 1
            if len(entries) < PAGE_LIMIT or pages <= 1:
                tally.caught_up = True
                if cursor_key == CURSOR:
                    with self._store.transaction():
                        db.set_state(self._store, "caught_up_at", str(time.time()))
                break
        return tally

    async def _take_page(self, entries: list[dict[str, Any]], since: int | None,
                         cursor_key: str, tally: Tally) -> None:
        fresh = [e for e in entries if since is None or e["id"] > since]
        if len(fresh) < len(entries):
            log.warning("deals: retailCRM returned %d history entries at or below the cursor "
                        "%s (did sinceId go backwards?): they are ignored",
                        len(entries) - len(fresh), since)
        tally.entries += len(fresh)
        self._entries += len(fresh)
        full: dict[int, dict[str, Any]] = {}
        wanted: set[int] = set()
        touched = {_order_id(e) for e in fresh} - {None}
        known = db.known_orders(self._store, [i for i in touched if i is not None])
        for entry in fresh:
            change, order_id = model.change_of(entry), _order_id(entry)
            if change is None or order_id is None or change.kind == "deleted":
                continue
            if entry.get("created") and not change.needs_order:
                full[order_id] = entry["order"]
            if change.needs_order or (order_id not in known and order_id not in full):
                wanted.add(order_id)
        fetched = await self._fetch(sorted(wanted - set(full)), tally)
        with self._store.transaction():
            batch = self._apply(fresh, {**full, **fetched}, known, tally)
            now = time.time()
            size = max(1, self._settings.ratelimit.upload_batch_size)
            for start in range(0, len(batch), size):
                delivery.enqueue_upload(self._store, batch[start:start + size], now)
            db.set_state(self._store, cursor_key, str(entries[-1]["id"]), now)
            if cursor_key == CURSOR:
                db.set_state(self._store, "last_entry_at", str(entries[-1].get("createdAt")))
        if batch:
            self._wake()

    async def _fetch(self, ids: list[int], tally: Tally) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), PAGE_LIMIT):
            body = await self._get(tally, self._crm.orders_by_ids(ids[start:start + PAGE_LIMIT]))
            for order in body.get("orders") or []:
                if isinstance(order, dict) and isinstance(order.get("id"), int):
                    out[order["id"]] = order
        tally.fetched += len(out)
        return out

    def _apply(self, entries: list[dict[str, Any]], orders: dict[int, dict[str, Any]],
               known: set[int], tally: Tally) -> list[dict[str, Any]]:
        """Record the page's changes (inside the caller's transaction); the upload batch."""
        now = time.time()
        stages = db.stages(self._store)
        saved: set[int] = set()
        gone: set[int] = set()
        touched: dict[int, list[int]] = {}
        for entry in entries:
            change, order_id = model.change_of(entry), _order_id(entry)
            if change is None or order_id is None:
                continue
            if change.kind == "deleted":
                log.info("deals: order %s was deleted in retailCRM (history entry %s): its deal "
                         "stays in UIS as last sent", order_id, entry["id"])
                db.mark_deleted(self._store, order_id, now)
                gone.add(order_id)
                continue
            if order_id in gone:
                continue
            source = orders.get(order_id)
            facts = model.order_facts(source) if source is not None else None
            if facts is not None and order_id not in saved:
                db.save_order(self._store, facts, self._tz, now)
                saved.add(order_id)
            elif facts is None and order_id not in known and order_id not in saved:
                log.warning("deals: history entry %s names order %s, which retailCRM no longer "
                            "returns (deleted?): skipped", entry["id"], order_id)
                gone.add(order_id)
                continue
            at = str(entry.get("createdAt") or "")
            if change.kind == "stage":
                status = change.status or (facts.status if facts else None)
                if status and stages and status not in stages:
                    log.warning("deals: order %s reached status %r, which is in no status group "
                                "retailCRM's reference lists: not sent until it is",
                                order_id, status)
                row_id = db.add_transition(self._store, entry["id"], order_id, "stage", status,
                                           at, at)
                if status:
                    db.set_order_status(self._store, order_id, status, now)
            else:
                status, stage_at = db.last_stage(self._store, order_id)
                current = db.order(self._store, order_id)
                if status is None and current is not None:
                    status, stage_at = current["status"], current["created_at"]
                row_id = db.add_transition(self._store, entry["id"], order_id, "update", status,
                                           at, stage_at or at)
            if row_id is not None:
                touched.setdefault(order_id, []).append(row_id)
                tally.transitions += 1
        batch = []
        for order_id, transition_ids in touched.items():
            current = db.order(self._store, order_id)
            if current is None or order_id in gone:
                continue
            numbers = [d for d in (phones.to_digits(p) for p in _json_list(current["phones"]))
                       if d]
            call_id = db.call_for_order(self._store, numbers, current["created_ts"])
            reason = model.skip_reason(current, call_id)
            db.link_and_skip(self._store, order_id, call_id, reason)
            if reason is not None:
                if not current["skipped_reason"]:
                    log.info("deals: order %s skipped: %s", order_id, reason)
                tally.skipped += 1
                tally.skipped_ids.append(order_id)
                continue
            batch.append({"order_id": order_id, "transitions": transition_ids})
        tally.orders += len(batch)
        return batch


def _order_id(entry: dict[str, Any]) -> int | None:
    order = entry.get("order")
    order_id = order.get("id") if isinstance(order, dict) else None
    return order_id if isinstance(order_id, int) else None


def _json_list(text: str | None) -> list[str]:
    value = json.loads(text or "[]")
    return [str(v) for v in value] if isinstance(value, list) else []

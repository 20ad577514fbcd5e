"""``run.py deals backfill``: load the retailCRM orders of a past period into UIS as deals.

It reads ``orders/history`` of the period (``filter[startDate]``/``filter[endDate]``, then the
``sinceId`` cursor) with its own cursor in SQLite, keyed by the period: an interrupted run
continues where it stopped, a finished one reads nothing again. Pages are taken exactly as the
daemon takes them (``features/deals.py``): the same tables, the same outbox rows, so deals the
daemon already sent are not sent twice. Then, unless a daemon answers on ``server.listen``
(it delivers them), an outbox in this process delivers the deal rows, at the same rate limits.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any, TextIO

import httpx
import trio

from tracker.cli.backfill import Progress, daemon_answers
from tracker.clients import throttle
from tracker.clients.crm import CrmClient
from tracker.clients.uis import UisClient
from tracker.config import Settings
from tracker.db import deals as db
from tracker.db.store import Store, open_store
from tracker.delivery import deals as deal_delivery
from tracker.errors import DeliveryError, RetryableDelivery
from tracker.features.deals import DealsLoop, Tally

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DELIVERY_DEADLINE_SECONDS = 3600.0


def _line(tally: Tally) -> str:
    return (f"deals backfill: {tally.pages} pages, {tally.entries} history entries, "
            f"{tally.orders} order batches queued, {tally.skipped} skipped")


async def run_backfill(settings: Settings, date_from: datetime, date_till: datetime, *,
                       deliver: bool | None = None, progress: bool = False,
                       out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Exit status 0 when the whole period was read (and, if delivering, sent); 1 when an
    upstream stopped it (run the same command again: it resumes)."""
    bar = Progress(err, progress)
    store = open_store(settings)
    start, end = date_from.strftime(TIME_FORMAT), date_till.strftime(TIME_FORMAT)
    key = f"backfill:{start}|{end}"
    failure: str | None = None
    tally = Tally()
    try:
        async with httpx.AsyncClient() as http:
            crm = CrmClient(http, settings.crm, throttle.crm_gate(settings.ratelimit))
            uis = UisClient(http, settings.uis, throttle.uis_gate(settings.ratelimit))
            loop = DealsLoop(store, settings, crm)
            try:
                await _with_retries(settings, lambda: loop.sync_structure(tally))
                while not tally.caught_up:
                    await _with_retries(settings, lambda: loop.read_history(
                        tally, cursor_key=key, start_date=start, end_date=end,
                        on_page=lambda t: bar.show(_line(t))))
            except DeliveryError as exc:
                failure = str(exc)
            bar.show(_line(tally), force=True)
            bar.close()
            print(f"deals backfill {start} … {end}: {tally.entries} history entries read, "
                  f"{tally.transitions} changes recorded, {tally.fetched} orders fetched, "
                  f"{tally.skipped} orders skipped (no contact data)", file=out)
            if failure:
                print(f"stopped early: {failure}. Run the same command again: it resumes.",
                      file=out)
            if deliver is None and await daemon_answers(settings):
                print(f"a daemon answers on {settings.server.listen}: it uploads the deals",
                      file=out)
                deliver = False
            if deliver is not False:
                counts = await _deliver(store, settings, crm, uis, bar)
                print("deal uploads: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                                    ("delivered", "dropped", "dead", "pending")),
                      file=out)
                if counts.get("pending"):
                    failure = failure or "deal uploads still pending"
    finally:
        bar.close()
        store.close()
    return 1 if failure else 0


async def _with_retries(settings: Settings, step: Any) -> None:
    """Run ``step`` again after transient failures (doubling pauses, ``reconcile`` limits)."""
    failures = 0
    while True:
        try:
            await step()
            return
        except RetryableDelivery:
            failures += 1
            if failures > settings.reconcile.max_retries:
                raise
            await trio.sleep(min(600.0, settings.reconcile.retry_seconds * 2 ** (failures - 1)))


async def _deliver(store: Store, settings: Settings, crm: CrmClient, uis: UisClient,
                   bar: Progress) -> dict[str, int]:
    from tracker.delivery.dispatcher import Outbox

    outbox = Outbox(store, settings, deal_delivery.handlers(store, uis, settings),
                    only_lanes={db.LANE})
    deadline = time.monotonic() + DELIVERY_DEADLINE_SECONDS
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        while time.monotonic() < deadline:
            counts = db.lane_counts(store)
            bar.show(f"uploading deals: {counts.get('pending', 0)} batches pending")
            if not counts.get("pending"):
                break
            with trio.move_on_after(1.0):
                await outbox.wait_until_idle()
            await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    bar.close()
    return db.lane_counts(store)

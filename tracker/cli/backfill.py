"""``python run.py backfill``: create the missed sessions of a period, then upload them.

The reconciler (``tracker.features.reconcile``) does the reading and creating, over the windows of
``tracker.core.windows``; this command adds a progress line, the summary, and an outbox of its
own for the calls it created, unless a daemon answers on ``server.listen`` (it uploads them).
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import TextIO
from zoneinfo import ZoneInfo

import httpx
import trio

from tracker.clients import throttle
from tracker.clients.crm import CrmClient
from tracker.clients.uis import UisClient
from tracker.config import Settings
from tracker.core import statecharts
from tracker.core.calls import Call
from tracker.core.catalogue import EVENTS
from tracker.db.store import Store, open_store
from tracker.delivery.dispatcher import Outbox
from tracker.delivery.handlers import RetailCrmHandlers
from tracker.errors import DeliveryError
from tracker.features.reconcile import Reconciler, Tally


class Progress:
    """One status line on stderr, rewritten in place with ``\\r``; silent when disabled."""

    def __init__(self, stream: TextIO, enabled: bool, *, min_interval: float = 0.1) -> None:
        self._stream = stream
        self.enabled = enabled
        self._min_interval = min_interval
        self._shown_at = -1e9
        self._width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._shown_at < self._min_interval:
            return
        self._shown_at = now
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)

    def close(self) -> None:
        """End the line (if one was shown) so that what follows starts clean."""
        if self.enabled and self._width:
            self._stream.write("\n")
            self._stream.flush()
            self._width = 0


def _reading_line(tally: Tally) -> str:
    return (f"backfill {tally.window}: read {tally.read}/{tally.reported}, "
            f"{tally.created} new, {tally.known} known")


async def daemon_answers(settings: Settings) -> bool:
    """True when something accepts connections on ``server.listen`` (the daemon, presumably)."""
    host, _, port = settings.server.listen.rpartition(":")
    host = host.strip("[]")
    if not port.isdigit() or int(port) == 0:
        return False
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    with trio.move_on_after(1.0):
        try:
            stream = await trio.open_tcp_stream(host, int(port))
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


async def run_backfill(settings: Settings, date_from: datetime, date_till: datetime, *,
                       deliver: bool | None = None, progress: bool = False,
                       out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``python run.py backfill``: create the missed sessions of a period, then upload them
    (unless ``deliver`` is False, or None and a daemon answers: it will). Exit status: 0 when
    the whole period was read, 1 when the Data API stopped it (a rerun continues)."""
    chart = statecharts.load_all(statecharts.DEFAULT_DIR, Call, EVENTS)["call"]
    tz = ZoneInfo(settings.crm.timezone)
    bar = Progress(err, progress)
    store = open_store(settings)
    failure: str | None = None
    try:
        async with httpx.AsyncClient() as http:
            uis = UisClient(http, settings.uis, throttle.uis_gate(settings.ratelimit))
            mark = store.last_outbox_id()
            reconciler = Reconciler(store, chart, tz, uis, settings.reconcile,
                                    on_progress=lambda t: bar.show(_reading_line(t)))
            tally = Tally()
            try:
                await reconciler.reconcile(date_from, date_till, tally)
            except DeliveryError as exc:
                failure = str(exc)
            bar.show(_reading_line(tally), force=True)
            bar.close()
            print(f"backfill {date_from:%Y-%m-%d %H:%M:%S} … {date_till:%Y-%m-%d %H:%M:%S}: "
                  f"UIS reported {tally.reported} finished sessions; {tally.known} already "
                  f"known, {tally.created} created ({tally.answered} answered, {tally.lost} "
                  f"lost), {tally.recent} too recent (left to the daemon), {tally.rejected} "
                  f"unreadable", file=out)
            if failure:
                print(f"stopped early: {failure}. Run the same command again later: sessions "
                      "created so far are skipped.", file=out)
            if tally.created_ids and deliver is None and await daemon_answers(settings):
                print(f"a daemon answers on {settings.server.listen}: it uploads the new "
                      "calls", file=out)
                deliver = False
            if tally.created_ids and deliver is not False:
                counts = await _deliver(store, settings, http, uis, tally.created_ids, mark, bar)
                print("uploads: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in
                                               ("delivered", "dropped", "dead", "pending")),
                      file=out)
                if counts.get("pending"):
                    print("pending uploads stay queued: the daemon delivers them when it runs",
                          file=out)
    finally:
        bar.close()
        store.close()
    return 1 if failure else 0


async def _deliver(store: Store, settings: Settings, http: httpx.AsyncClient, uis: UisClient,
                   call_ids: list[int], mark: int, bar: Progress) -> dict[str, int]:
    """Run an outbox in this process, on the new calls' rows only, until they are settled (or
    a deadline: an answered call may wait ``uis.record_wait_seconds`` for its recording).

    Only the lanes of the calls it created: other pending work (a status change, a daemon's
    pop-up) is the daemon's, whose handlers and timing it needs; this process leaves it alone.
    Nor does it ask UIS about busy lines: these calls were read from the report already."""
    crm = CrmClient(http, settings.crm, throttle.crm_gate(settings.ratelimit))
    outbox = Outbox(store, settings, RetailCrmHandlers(store, settings, crm, uis).kinds(),
                    only_lanes=store.lanes_of_calls(call_ids, mark))

    def counts() -> dict[str, int]:
        return store.statuses_of_calls(call_ids, mark)

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        with trio.move_on_after(settings.uis.record_wait_seconds + 60):
            while True:
                now = counts()
                total = sum(now.values())
                bar.show(f"uploading: {total - now.get('pending', 0)}/{total}")
                if not now.get("pending"):
                    break
                await outbox.wait_until_idle()
                await trio.sleep(0.1)  # rows waiting for a recording or a retry are not idle work
        nursery.cancel_scope.cancel()
    bar.close()
    return counts()

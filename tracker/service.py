"""The composition root: build the context, own every long-running task, shut down cleanly.

Task tree (one trio nursery each):

    serve()
    ├── outbox.run()            workers: outside the HTTP nursery so requests drain first
    ├── intake.run_writer()     group commit of notifications (writes what is queued on exit)
    ├── Checkpointer.run()      WAL checkpoints in a thread, off the event loop
    ├── BackgroundCheck.run()   integrity check of a cleanly closed file, in a thread
    ├── live.run()              the status page's change feed (closed first on shutdown)
    ├── Sweeper.run()           stale calls settled from the Data API report
    ├── Reconciler.run()        missed sessions created from the Data API report
    ├── DealsLoop.run()         retailCRM orders -> UIS deals (when deals.enabled)
    └── http
        ├── hypercorn serve     stops when the shutdown trigger returns
        └── signal watcher      SIGINT/SIGTERM -> draining (Connection: close) -> stop
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import httpx
import trio

from tracker.clients import throttle
from tracker.clients.crm import CrmClient
from tracker.clients.uis import UisClient
from tracker.config import Settings
from tracker.context import Context, Lifecycle
from tracker.core import crmwork, statecharts
from tracker.core.calls import Call
from tracker.core.catalogue import EVENTS
from tracker.db import integrity, maintenance, requestlog
from tracker.db.checkpointer import Checkpointer
from tracker.db.store import Store, open_store
from tracker.delivery import busy
from tracker.delivery import deals as deal_delivery
from tracker.delivery.crmwork import CrmWork
from tracker.delivery.dispatcher import Batched, BatchHandler, Handler, Outbox
from tracker.delivery.handlers import RetailCrmHandlers
from tracker.features.deals import DealsLoop
from tracker.features.reconcile import Reconciler
from tracker.features.status_sync import StatusPush, StatusSync
from tracker.features.sweeper import Sweeper
from tracker.intake.batcher import Intake
from tracker.web.httpserve import serve_app

log = logging.getLogger(__name__)

DRAIN_SECONDS = 0.3  # answer with Connection: close this long before hypercorn stops


@dataclass(frozen=True)
class Running:
    """What ``serve`` reports once it accepts connections."""

    url: str
    ctx: Context
    deals: DealsLoop | None = None  # the deals loop (tests poke it instead of waiting)


def outbox_handlers(store: Store, settings: Settings, crm: CrmClient,
                    uis: UisClient) -> dict[str, Handler | Batched]:
    """What the daemon's outbox does with each kind of row: one entry per kind."""
    crm_handlers = RetailCrmHandlers(store, settings, crm, uis)
    upload: BatchHandler = crm_handlers.upload
    reasons = settings.click.busy_reasons()
    if reasons:  # outbound no-answer uploads ask UIS whether the line was busy
        upload = busy.telling_busy(upload, store=store, uis=uis,
                                   tz=ZoneInfo(settings.crm.timezone), reasons=reasons)
    # Calls become CRM work: its outbox kinds, and the attribution lookup before the upload.
    work = CrmWork(store, settings, crm, uis)
    if settings.attribution.enabled:
        upload = work.wrap_upload(upload)
    return {
        **crm_handlers.kinds(upload=upload),
        **StatusPush(store, settings.status_sync, uis, crm).kinds(),
        **work.handlers(),
        **deal_delivery.handlers(store, uis, settings),
    }


async def serve(
    settings: Settings,
    *,
    stop: trio.Event | None = None,
    handle_signals: bool = True,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the daemon until ``stop`` is set or SIGINT/SIGTERM arrives; report ``Running``."""
    stop = trio.Event() if stop is None else stop
    chart = statecharts.load_all(statecharts.DEFAULT_DIR, Call, EVENTS)["call"]
    path = settings.database.path
    closed_cleanly = integrity.take_clean_close_note(path)
    store = open_store(settings, check=not closed_cleanly)
    if closed_cleanly:
        log.info("%s was closed cleanly: its integrity check runs in the background", path)
    background_check = integrity.BackgroundCheck(
        path, needed=closed_cleanly,
        on_damage=lambda problem: store.warn("database_damaged", str(path), problem))
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)
    try:
        async with httpx.AsyncClient(limits=limits) as http:
            crm = CrmClient(http, settings.crm, throttle.crm_gate(settings.ratelimit))
            uis = UisClient(http, settings.uis, throttle.uis_gate(settings.ratelimit))
            # its Metrics are the daemon's
            outbox = Outbox(store, settings, outbox_handlers(store, settings, crm, uis))
            intake = Intake(store, chart, ZoneInfo(settings.crm.timezone),
                            on_batch=outbox.metrics.observe_batch,
                            work=crmwork.switches(settings))
            checkpointer = Checkpointer(path, on_checkpoint=outbox.metrics.observe_checkpoint)
            ctx = Context(settings=settings, store=store, chart=chart, outbox=outbox, crm=crm,
                          metrics=outbox.metrics, uis=uis, intake=intake,
                          integrity=background_check, checkpointer=checkpointer,
                          lifecycle=Lifecycle(started_at=time.time()))
            from tracker.web.app import create_app  # quart is heavy; import it only when serving

            app = create_app(ctx)
            sync = StatusSync(ctx)
            deals_loop = DealsLoop(store, settings, crm, wake=outbox.wake)
            outbox.on_wake.append(ctx.live.poke)
            async with trio.open_nursery() as workers:
                await workers.start(outbox.run)
                await workers.start(intake.run_writer)
                # commits on the event loop no longer wait for checkpoints: a thread does them
                store.stop_autocheckpoint()
                await workers.start(checkpointer.run)
                await workers.start(background_check.run)
                await workers.start(maintenance.run_retention, store, settings.retention)
                await workers.start(ctx.live.run)
                await workers.start(Sweeper(ctx).run)
                await workers.start(Reconciler.for_context(ctx).run)
                await workers.start(deals_loop.run)
                await workers.start(requestlog.run_pruner, store,
                                    settings.admin.request_log_retention_days)
                if settings.status_sync.poll_seconds > 0:
                    await workers.start(sync.run_poller)

                async def shutdown_trigger() -> None:
                    await stop.wait()
                    ctx.lifecycle.draining = True
                    ctx.live.close()  # open status pages' streams end now, not at the timeout
                    await trio.sleep(DRAIN_SECONDS)

                async with trio.open_nursery() as http_tasks:
                    if handle_signals:
                        http_tasks.start_soon(_watch_signals, stop)

                    async def run_http(*, task_status: trio.TaskStatus[str]) -> None:
                        await serve_app(app, settings.server.listen,
                                        shutdown_trigger=shutdown_trigger,
                                        keep_alive_timeout_seconds=min(
                                            30.0, settings.server.request_timeout_seconds),
                                        task_status=task_status)
                        http_tasks.cancel_scope.cancel()

                    url: str = await http_tasks.start(run_http)
                    log.info("tracker listening on %s", url)
                    task_status.started(Running(url, ctx, deals_loop))
                workers.cancel_scope.cancel()
    except BaseException:
        store.close()
        log.info("tracker stopped")
        raise
    store.close()
    integrity.note_clean_close(path)  # the next start may then check in the background
    log.info("tracker stopped")


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: draining and stopping", signal.Signals(signum).name)
            stop.set()
            return

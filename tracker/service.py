"""The composition root: build the context, own every long-running task, shut down cleanly.

Task tree (one trio nursery each):

    serve()
    ├── outbox.run()            workers: outside the HTTP nursery so requests drain first
    └── http
        ├── hypercorn serve     stops when the shutdown trigger returns
        └── signal watcher      SIGINT/SIGTERM -> draining (Connection: close) -> stop
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from . import statecharts
from .calls import Call
from .config import Settings
from .context import Context, Lifecycle
from .crm import CrmClient
from .errors import StoreError
from .httpserve import serve_app
from .outbox import Outbox
from .store import Store
from .templates import EVENTS
from .uis import UisClient

log = logging.getLogger(__name__)

DRAIN_SECONDS = 0.3  # answer with Connection: close this long before hypercorn stops


@dataclass(frozen=True)
class Running:
    """What ``serve`` reports once it accepts connections."""

    url: str
    ctx: Context


def open_store(settings: Settings) -> Store:
    """Open the database, check it, apply migrations. Raises ``StoreError`` with the reason."""
    store = Store(settings.database.path, synchronous=settings.database.synchronous)
    verdict = store.integrity_ok()
    if verdict != "ok":
        store.close()
        raise StoreError(f"{settings.database.path}: integrity check failed: {verdict}")
    store.migrate()
    return store


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
    store = open_store(settings)
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)
    try:
        async with httpx.AsyncClient(limits=limits) as http:
            crm = CrmClient(http, settings.crm)
            uis = UisClient(http, settings.uis)
            outbox = Outbox(store, settings, crm, uis)
            ctx = Context(settings=settings, store=store, chart=chart, outbox=outbox, crm=crm,
                          uis=uis, lifecycle=Lifecycle(started_at=time.time()))
            from .web import create_app  # quart is heavy; import it only when serving

            app = create_app(ctx)
            async with trio.open_nursery() as workers:
                await workers.start(outbox.run)

                async def shutdown_trigger() -> None:
                    await stop.wait()
                    ctx.lifecycle.draining = True
                    await trio.sleep(DRAIN_SECONDS)

                async with trio.open_nursery() as http_tasks:
                    if handle_signals:
                        http_tasks.start_soon(_watch_signals, stop)

                    async def run_http(*, task_status: trio.TaskStatus[str]) -> None:
                        await serve_app(app, settings.server.listen,
                                        shutdown_trigger=shutdown_trigger,
                                        task_status=task_status)
                        http_tasks.cancel_scope.cancel()

                    url: str = await http_tasks.start(run_http)
                    log.info("tracker listening on %s", url)
                    task_status.started(Running(url, ctx))
                workers.cancel_scope.cancel()
    finally:
        store.close()
        log.info("tracker stopped")


async def _watch_signals(stop: trio.Event) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s: draining and stopping", signal.Signals(signum).name)
            stop.set()
            return


def describe(url: str, settings: Settings) -> dict[str, Any]:
    """What to print at start-up (no secrets)."""
    return {"status_page": url + "/", "webhook": url + "/webhooks/uis/<uis.webhook_secret>",
            "database": str(settings.database.path)}

"""Serving an ASGI app with hypercorn's trio worker, reporting the bound URL through task_status."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

log = logging.getLogger(__name__)


def hypercorn_config(listen: str, *, graceful_timeout_seconds: float = 2.0,
                     keep_alive_timeout_seconds: float = 30.0) -> Config:
    """A quiet hypercorn config binding ``listen`` (``host:port``; port 0 picks a free one).
    ``keep_alive_timeout_seconds`` also closes a connection whose request headers never end."""
    config = Config()
    config.bind = [listen]
    config.graceful_timeout = graceful_timeout_seconds
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    config.keep_alive_timeout = keep_alive_timeout_seconds
    return config


async def serve_app(
    app: Any,
    listen: str = "127.0.0.1:0",
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout_seconds: float = 2.0,
    keep_alive_timeout_seconds: float = 30.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until cancelled or ``shutdown_trigger`` returns; report ``http://host:port``.

    Never returns before shutdown. The URL reported is the first bound address.
    """
    config = hypercorn_config(listen, graceful_timeout_seconds=graceful_timeout_seconds,
                              keep_alive_timeout_seconds=keep_alive_timeout_seconds)

    async def _run(*, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(_run)
        task_status.started(binds[0].rstrip("/"))

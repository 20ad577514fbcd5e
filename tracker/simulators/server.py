"""Serving helpers shared by the simulators: a scoped server, a restartable one, a change signal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio

from tracker.web.httpserve import serve_app

T = TypeVar("T")


@asynccontextmanager
async def open_server(app: Any, listen: str = "127.0.0.1:0") -> AsyncIterator[str]:
    """Serve ``app`` for the duration of the block; yields its ``http://host:port`` URL."""
    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(serve_app, app, listen)
        try:
            yield url
        finally:
            nursery.cancel_scope.cancel()


class RestartableServer:
    """Serves an app on a fixed loopback port that can be stopped (connections are then refused)
    and started again on the same port. The tasks run in the nursery given; ``port`` 0 takes a
    free port on the first start and keeps it afterwards."""

    def __init__(self, app: Any, nursery: trio.Nursery, *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.app = app
        self.host = host
        self.port = port
        self._nursery = nursery
        self._scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    @property
    def url(self) -> str:
        """The base URL; valid once the server has started."""
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._scope is not None

    async def start(self) -> str:
        """Listen again (or for the first time); returns the URL once connections are accepted."""
        if self._scope is not None:
            return self.url
        url: str = await self._nursery.start(self._serve)
        self.port = urlsplit(url).port or self.port
        return self.url

    async def stop(self) -> None:
        """Close the listener and every connection; returns once the port refuses connections."""
        if self._scope is None:
            return
        self._scope.cancel()
        await self._stopped.wait()

    async def _serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        self._stopped = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                await serve_app(self.app, f"{self.host}:{self.port}", task_status=task_status)
        finally:
            self._scope = None
            self._stopped.set()


class Changes:
    """Lets tasks wait until a predicate over recorded state holds; recorders call :meth:`poke`."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def poke(self) -> None:
        """Something was recorded: wake every waiter to re-check its predicate."""
        self._event.set()
        self._event = trio.Event()

    # A test helper: a bound on each wait reads better in tests than a fail_after around it.
    async def wait_until(self, predicate: Callable[[], T], timeout: float = 5.0) -> T:  # noqa: ASYNC109
        """Return the first truthy value of ``predicate()``; trio.TooSlowError after ``timeout``.

        The predicate is re-checked on every poke and at least every 50 ms (for time-based state
        such as lagging records).
        """
        with trio.fail_after(timeout):
            while True:
                result = predicate()
                if result:
                    return result
                with trio.move_on_after(0.05):
                    await self._event.wait()

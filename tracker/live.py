"""Change notifications for the status page: a throttled broadcaster with bounded subscriptions.

Writers call ``poke()`` after a commit (it never blocks and costs next to nothing); ``run()``
turns any number of pokes into at most one new *version* per ``min_interval_seconds`` and offers
it to every subscriber without waiting. A subscriber whose bounded channel is full has fallen
behind (its browser stopped reading): it is dropped, its stream ends, and the browser's
EventSource reconnects for a fresh picture. ``close()`` ends every subscription at once, so that
open streams do not hold up the daemon's shutdown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio


@dataclass(frozen=True)
class LiveStatistics:
    subscribers: int
    version: int  # how many updates were published since start
    dropped_total: int  # subscribers dropped for falling behind
    closed: bool


class Live:
    """Fan-out of "something changed" to the status page's streams."""

    def __init__(self, *, capacity: int = 16, min_interval_seconds: float = 0.2) -> None:
        self._capacity = capacity
        self._min_interval = min_interval_seconds
        self._changed = trio.Event()
        self._subscribers: set[trio.MemorySendChannel[int]] = set()
        self._version = 0
        self._dropped = 0
        self._closed = False

    @property
    def version(self) -> int:
        return self._version

    def poke(self) -> None:
        """Note that the database changed; subscribers hear of it within ``min_interval``."""
        self._changed.set()

    def close(self) -> None:
        """End every subscription now and refuse new ones (the daemon is stopping)."""
        self._closed = True
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[int]]:
        """A channel of versions; it ends (``EndOfChannel``) when the subscriber is dropped or
        the broadcaster is closed. Leave the block to unsubscribe."""
        send, receive = trio.open_memory_channel[int](self._capacity)
        if self._closed:
            send.close()
        else:
            self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()

    def publish_nowait(self) -> None:
        """Offer a new version to every subscriber now, dropping those that fell behind."""
        self._version += 1
        for send in list(self._subscribers):
            try:
                send.send_nowait(self._version)
            except trio.WouldBlock:
                self._subscribers.discard(send)
                send.close()
                self._dropped += 1
            except trio.BrokenResourceError:
                self._subscribers.discard(send)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Publish coalesced changes until cancelled."""
        task_status.started()
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            self.publish_nowait()
            # Coalesce bursts (hundreds of notifications a second) into a few page updates.
            await trio.sleep(self._min_interval)

    def statistics(self) -> LiveStatistics:
        return LiveStatistics(subscribers=len(self._subscribers), version=self._version,
                              dropped_total=self._dropped, closed=self._closed)

"""Shared test harness: the real daemon in-process on 127.0.0.1 against both simulators."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio

from tracker import config, service
from tracker.db.store import Store
from tracker.simulators import CrmSimulator, Scenario, UisSimulator
from tracker.web.httpserve import serve_app

SECRET = "test-webhook-secret-0123456789"
UIS_TOKEN = "test-uis-token"
CRM_KEY = "test-crm-key"
CLIENT_ID = "test-client-id-0123456789"
ANNA, BORIS, VERA = (101, "Анна Иванова"), (102, "Борис Петров"), (103, "Вера Смирнова")
MAPPING = {101: (1, "101"), 102: (2, "102"), 103: (3, "103")}
# The CRM work a call creates (customers, tasks, attribution) is off in the harness unless a test
# turns it on: the other tests count retailCRM requests and outbox rows of the telephony alone.
CRM_WORK_OFF: dict[str, dict[str, Any]] = {
    "customers": {"create": False},
    "tasks": {"missed_calls": False, "complete_on_reach": False},
    "attribution": {"enabled": False},
}


def settings_for(tmp_path: Path, uis_url: str, crm_url: str,
                 **sections: dict[str, Any]) -> config.Settings:
    """Test settings: fast retries, a short recording wait, the three simulator employees."""
    data: dict[str, Any] = {
        "server": {"listen": "127.0.0.1:0", "public_url": "http://tracker.test"},
        "database": {"path": str(tmp_path / "tracker.db")},
        "uis": {
            "webhook_secret": SECRET,
            "access_token": UIS_TOKEN,
            "data_api_url": f"{uis_url}/dataapi/v2.0",
            "call_api_url": f"{uis_url}/callapi/v4.0",
            "media_url": "https://media.test/talk",
            "virtual_phone_number": "74950000000",
            "record_wait_seconds": 2,
            "timeout_seconds": 2,
        },
        "crm": {"url": crm_url, "api_key": CRM_KEY, "client_id": CLIENT_ID, "timeout_seconds": 2},
        "outbox": {"retry_base_seconds": 0.05, "retry_max_seconds": 0.4},
        "employees": [{"uis_id": u, "crm_user_id": c, "code": code}
                      for u, (c, code) in MAPPING.items()],
        **{section: dict(values) for section, values in CRM_WORK_OFF.items()},
    }
    for section, values in sections.items():
        if section == "employees":
            data["employees"] = values
        else:
            data.setdefault(section, {}).update(values)
    return config.parse(data, {})


@dataclass
class Sims:
    uis: UisSimulator
    crm: CrmSimulator
    uis_url: str
    crm_url: str


@dataclass
class Daemon:
    url: str
    ctx: Any
    stop: trio.Event
    settings: config.Settings
    sims: Sims
    client: httpx.AsyncClient
    done: trio.Event = field(default_factory=trio.Event)
    deals: Any = None  # the deals loop (features/deals.py)
    _page_key: str | None = None

    @property
    def webhook(self) -> str:
        return f"{self.url}/webhooks/uis/{SECRET}"

    def page_headers(self) -> dict[str, str]:
        """``Authorization`` for the status page (a ``calls:read`` key, made on first use)."""
        if self._page_key is None:
            from tracker.db import keys

            self._page_key = keys.create(self.ctx.store, "test-page", ["calls:read"])[1]
        return {"Authorization": f"Bearer {self._page_key}"}

    async def settle(self) -> None:
        """Wait until the outbox has delivered everything that is due."""
        with trio.fail_after(10):
            await self.ctx.outbox.wait_until_idle()

    async def post(self, fields: dict[str, Any] | bytes | str, **kwargs: Any) -> httpx.Response:
        content = fields if isinstance(fields, bytes | str) else json.dumps(fields)
        headers = kwargs.pop("headers", {"content-type": "application/json"})
        return await self.client.post(self.webhook, content=content, headers=headers, **kwargs)

    async def play(self, scenario: Scenario, *, settle: bool = True,
                   **kwargs: Any) -> list[httpx.Response]:
        """Send a scenario's notifications; by default wait for the outbox after each one."""
        responses = await self.sims.uis.play(
            scenario, self.webhook, self.client, between=self.settle if settle else None, **kwargs
        )
        assert [r.status_code for r in responses] == [200] * len(responses), [
            r.text for r in responses
        ]
        return responses

    def crm_requests(self, endpoint: str) -> list[Any]:
        return [r for r in self.sims.crm.requests if r.endpoint == endpoint]

    def events_for(self, session_id: int) -> list[dict[str, Any]]:
        return self.sims.crm.events_for(str(session_id))

    def uploads_for(self, session_id: int) -> list[dict[str, Any]]:
        return self.sims.crm.calls_for(str(session_id))

    def count(self, table: str, where: str = "1", *args: Any) -> int:
        return int(self.ctx.store.conn.execute(
            f"SELECT count(*) FROM {table} WHERE {where}", args).fetchone()[0])


@asynccontextmanager
async def open_sims(**crm_kwargs: Any) -> AsyncIterator[Sims]:
    uis = UisSimulator(UIS_TOKEN,
                       employees=[{"id": i, "full_name": n} for i, n in (ANNA, BORIS, VERA)])
    crm = CrmSimulator(CRM_KEY, known_codes={"101", "102", "103"}, known_user_ids={1, 2, 3},
                       **crm_kwargs)
    async with trio.open_nursery() as nursery:
        uis_url = await nursery.start(serve_app, uis.app)
        crm_url = await nursery.start(serve_app, crm.app)
        yield Sims(uis, crm, uis_url, crm_url)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_daemon(sims: Sims, settings: config.Settings) -> AsyncIterator[Daemon]:
    """The real daemon, in this process, until the block ends (then a clean stop)."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=5) as client:
        running: service.Running = await nursery.start(
            lambda task_status: service.serve(settings, stop=stop, handle_signals=False,
                                              task_status=task_status))
        daemon = Daemon(running.url, running.ctx, stop, settings, sims, client,
                        deals=running.deals)
        try:
            yield daemon
        finally:
            stop.set()


@asynccontextmanager
async def open_system(tmp_path: Path, **sections: dict[str, Any]) -> AsyncIterator[Daemon]:
    """Both simulators and the daemon wired together."""
    async with open_sims() as sims:
        settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections)
        async with open_daemon(sims, settings) as daemon:
            yield daemon


def start_time() -> datetime:
    return datetime(2024, 5, 17, 14, 3, 27)


# -- a damaged database ------------------------------------------------------------------------


def seed_index_rows(store: Store) -> None:
    """Rows whose index entries ``damage_an_index`` can find."""
    for i in range(50):
        store.warn("unmapped_employee", f"CORRUPTME-{i:04d}", "x")


def damage_an_index(db: Path) -> None:
    """Change one key in an index page, in place (the file keeps its size and inode): the page
    stays well-formed, so quick_check passes, but the index no longer matches its table."""
    with sqlite3.connect(db) as conn:
        [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE type = 'index'"
                                 " AND name = 'idx_warnings_kind_subject'").fetchall()
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    data = bytearray(db.read_bytes())
    start = (root - 1) * page_size
    at = data.index(b"CORRUPTME-0007", start, start + page_size)
    data[at + 10:at + 14] = b"9999"
    db.write_bytes(bytes(data))


def corrupt_an_index(db: Path) -> None:
    """A database (made here) with one index that disagrees with its table."""
    store = Store(db)
    store.migrate()
    seed_index_rows(store)
    store.close()
    damage_an_index(db)

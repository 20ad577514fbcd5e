"""``run.py demo``: the real daemon against the built-in simulators, fed a stream of calls.

It prints where to look, then a line whenever the retailCRM simulator has accepted more: the
proof, visible from outside the process, that calls go all the way through.
"""

from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path

import httpx
import trio

from tracker import config, service
from tracker.core.notifications import WEBHOOK_PREFIX
from tracker.db import keys
from tracker.simulators import CrmSimulator, UisSimulator
from tracker.simulators.scenarios import Scenario, offsets, random_scenario
from tracker.web.httpserve import serve_app

log = logging.getLogger(__name__)

_EMPLOYEES = [(101, "Анна Иванова", 1, "101"), (102, "Борис Петров", 2, "102"),
              (103, "Вера Смирнова", 3, "103")]


def demo_settings(listen: str, database: Path, uis_url: str, crm_url: str) -> config.Settings:
    """Settings pointing the daemon at the simulators (demo secrets are not secret)."""
    return config.parse({
        "server": {"listen": listen, "public_url": f"http://{listen}"},
        "database": {"path": str(database)},
        "uis": {
            "webhook_secret": "demo-webhook-secret-0123456789",
            "access_token": "demo-uis-token",
            "data_api_url": f"{uis_url}/dataapi/v2.0",
            "call_api_url": f"{uis_url}/callapi/v4.0",
            "media_url": f"{uis_url}/system/media/talk",
            "virtual_phone_number": "74950000000",
            "record_wait_seconds": 20,
        },
        "crm": {"url": crm_url, "api_key": "demo-crm-key",
                "client_id": "demo-client-id-0123456789"},
        "employees": [{"uis_id": u, "crm_user_id": c, "code": code}
                      for u, _, c, code in _EMPLOYEES],
        # Missed calls nobody was dialled for (lost in the IVR) still get a call-back task.
        "tasks": {"fallback_performer_id": 1},
        # The status page opens without a key from this machine; run_demo prints one for others.
        "admin": {"allow_loopback_without_key": True},
    }, {})


async def run_demo(listen: str, calls_per_minute: float, database: str | None) -> None:
    """Run until SIGINT/SIGTERM; prints where to look."""
    with tempfile.TemporaryDirectory(prefix="tracker-demo-") as tmp:
        db_path = Path(database) if database else Path(tmp) / "demo.db"
        uis = UisSimulator("demo-uis-token", employees=[{"id": u, "full_name": n}
                                                        for u, n, _, _ in _EMPLOYEES])
        crm = CrmSimulator("demo-crm-key", known_codes={c for *_, c in _EMPLOYEES},
                           known_user_ids={c for _, _, c, _ in _EMPLOYEES})
        async with trio.open_nursery() as nursery:
            uis_url: str = await nursery.start(serve_app, uis.app)
            crm_url: str = await nursery.start(serve_app, crm.app)
            uis.media_url = f"{uis_url}/system/media/talk"
            settings = demo_settings(listen, db_path, uis_url, crm_url)

            async def daemon(*, task_status: trio.TaskStatus[service.Running]) -> None:
                await service.serve(settings, task_status=task_status)
                nursery.cancel_scope.cancel()

            running: service.Running = await nursery.start(daemon)
            url = running.url
            webhook = f"{url}{WEBHOOK_PREFIX}{settings.uis.webhook_secret.reveal()}"
            uis.webhook_url = webhook
            await nursery.start(uis.run)
            _, key = keys.create(running.ctx.store, "demo", ["admin"])
            print(f"\ntracker demo is running\n  status page:  {url}/\n"
                  f"  page key:     {key}  (needed only from another machine)\n"
                  f"  webhook:      {webhook}\n  UIS sim:      {uis_url}\n"
                  f"  retailCRM sim: {crm_url}\n  database:     {db_path}\n"
                  "Ctrl-C stops it.\n", flush=True)
            nursery.start_soon(_generate, uis, webhook, calls_per_minute)
            nursery.start_soon(_report, crm)


def reached(crm: CrmSimulator) -> str:
    """What the retailCRM simulator has accepted so far, in one line."""
    calls = {str(e.get("callExternalId")) for e in crm.events}
    return (f"retailCRM simulator accepted {len(crm.events)} call events for {len(calls)} "
            f"calls, {len(crm.uploaded)} calls in the history")


async def _report(crm: CrmSimulator, every_seconds: float = 2.0) -> None:
    last = ""
    while True:
        await trio.sleep(every_seconds)
        line = reached(crm)
        if line != last and (crm.events or crm.uploaded):
            print(line, flush=True)
            last = line


async def _generate(uis: UisSimulator, webhook: str, calls_per_minute: float) -> None:
    rng = random.Random()
    employees = [(u, n) for u, n, _, _ in _EMPLOYEES]
    session_id = 4_000_000_000 + rng.randrange(1_000_000) * 1000
    missed: list[str] = []  # numbers of lost calls: some get called back, as in real life
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as calls:
        while True:
            session_id += 1
            if missed and rng.random() < 0.35:
                scenario = random_scenario(rng, session_id, employees, start=uis.now(),
                                           media_url=uis.media_url, contact=missed.pop(0),
                                           weights={"outbound_answered": 1})
            else:
                scenario = random_scenario(rng, session_id, employees, start=uis.now(),
                                           media_url=uis.media_url)
            if scenario.report["is_lost"] and scenario.direction == "in":
                missed = [*missed, scenario.contact_phone_number][-20:]
            calls.start_soon(_play, uis, scenario, webhook, client)
            await trio.sleep(rng.expovariate(calls_per_minute / 60.0))


async def _play(uis: UisSimulator, scenario: Scenario, webhook: str,
                client: httpx.AsyncClient) -> None:
    """Send each notification when it would really come: a call shown talking for 5 s has
    talked for 5 s, and its talk time, when it ends, is the time it was seen talking."""
    began = trio.current_time()
    uis.register(scenario, finished=False)
    try:
        for notification, offset in zip(scenario.notifications, offsets(scenario), strict=True):
            await trio.sleep_until(began + offset)
            if notification.event == "call_finished":
                uis.mark_finished(scenario.session_id)
            await uis.send_notification(notification, webhook, client)
    except httpx.HTTPError as exc:
        log.warning("demo call %s: %r", scenario.session_id, exc)
    finally:
        uis.mark_finished(scenario.session_id)

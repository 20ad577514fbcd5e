"""``run.py demo``: the real daemon against the built-in simulators, fed a stream of calls."""

from __future__ import annotations

import logging
import random
import tempfile
from pathlib import Path

import httpx
import trio

from tracker import config, service
from tracker.db import keys
from tracker.simulators import CrmSimulator, UisSimulator
from tracker.simulators.scenarios import random_scenario
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
            webhook = f"{url}/webhooks/uis/{settings.uis.webhook_secret.reveal()}"
            uis.webhook_url = webhook
            await nursery.start(uis.run)
            _, key = keys.create(running.ctx.store, "demo", ["admin"])
            print(f"\ntracker demo is running\n  status page:  {url}/\n"
                  f"  page key:     {key}  (needed only from another machine)\n"
                  f"  webhook:      {webhook}\n  UIS sim:      {uis_url}\n"
                  f"  retailCRM sim: {crm_url}\n  database:     {db_path}\n"
                  "Ctrl-C stops it.\n", flush=True)
            nursery.start_soon(_generate, uis, webhook, calls_per_minute)


async def _generate(uis: UisSimulator, webhook: str, calls_per_minute: float) -> None:
    rng = random.Random()
    employees = [(u, n) for u, n, _, _ in _EMPLOYEES]
    session_id = 4_000_000_000 + rng.randrange(1_000_000) * 1000
    async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as calls:
        while True:
            session_id += 1
            scenario = random_scenario(rng, session_id, employees, start=uis.now(),
                                       media_url=uis.media_url)
            calls.start_soon(_play, uis, scenario, webhook, client, rng.uniform(0.8, 2.5))
            await trio.sleep(rng.expovariate(calls_per_minute / 60.0))


async def _play(uis: UisSimulator, scenario: object, webhook: str, client: httpx.AsyncClient,
                gap: float) -> None:
    try:
        await uis.play(scenario, webhook, client, gap_seconds=gap)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        log.warning("demo call %s: %r", getattr(scenario, "session_id", "?"), exc)

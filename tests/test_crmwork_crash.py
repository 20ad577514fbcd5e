"""kill -9 between a create and its record: retailCRM has made the customer (or the task) but the
daemon dies before it hears so. After a restart on the same database there is still one customer
and one task: the retry finds what the first attempt made instead of making it again."""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.procs import ROOT, free_port, wait_healthy, write_config
from tests.support import ANNA, BORIS, SECRET, open_sims, start_time
from tracker.simulators import scenarios

CALLER = "79991234567"


def pending(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        count = conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
    conn.close()
    return int(count)


@pytest.mark.filterwarnings("ignore:Exception ignored in. <async_generator object ByteStream"
                            ":pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("endpoint", ["customers/create", "tasks/create"])
async def test_kill_between_create_and_record_still_one_customer_one_task(tmp_path, endpoint):
    db = tmp_path / "tracker.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with trio.fail_after(60):
        async with open_sims() as sims, httpx.AsyncClient(timeout=2) as client:
            config = write_config(
                tmp_path / "tracker.toml", db=db, uis_url=sims.uis_url, crm_url=sims.crm_url,
                port=port, crm={"timeout_seconds": 30}, reconcile={"enabled": False},
                customers={"create": True},
                tasks={"missed_calls": True, "complete_on_reach": True,
                       "fallback_performer_id": 3})
            crm = sims.crm
            processes: list[trio.Process] = []

            async def start(n: int) -> trio.Process:
                log = open(tmp_path / f"daemon-{n}.log", "wb")  # noqa: ASYNC230, SIM115
                process = await trio.lowlevel.open_process(
                    [sys.executable, "run.py", "serve", "--config", str(config)], cwd=ROOT,
                    stdout=log, stderr=log)
                log.close()
                processes.append(process)
                with trio.fail_after(20):
                    await wait_healthy(client, url)
                return process

            try:
                process = await start(0)
                crm.delay_only, crm.answer_delay_seconds = {endpoint}, 20.0  # done, not answered
                lost = scenarios.ring_group_lost(1_000_001, start=start_time(),
                                                 ringing=[ANNA, BORIS], contact=CALLER)
                await sims.uis.play(lost, f"{url}/webhooks/uis/{SECRET}", client)
                made = crm.customers if endpoint == "customers/create" else crm.tasks
                await crm.wait_for(lambda: made, timeout=20)
                process.send_signal(signal.SIGKILL)
                await process.wait()
                crm.answer_delay_seconds, crm.delay_only = 0.0, None

                process = await start(1)
                await crm.wait_for(lambda: crm.tasks and not pending(db), timeout=25)
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
            finally:
                for p in processes:
                    if p.returncode is None:
                        p.kill()
    assert len(crm.customers) == 1
    # the one create the kill interrupted; the retry found its result instead of sending again
    assert len([r for r in crm.requests if r.endpoint == endpoint]) == 1
    [task] = crm.tasks.values()
    assert task["customer"] == {"id": next(iter(crm.customers))}
    assert task["performerId"] == 2
    with sqlite3.connect(db) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status"))
        kept = conn.execute("SELECT count(*) FROM crm_customers").fetchone()[0]
        tasks = conn.execute("SELECT count(*) FROM crm_tasks").fetchone()[0]
    conn.close()
    assert set(statuses) <= {"delivered", "dropped"}, statuses
    assert kept == 1 and tasks == 1

"""Crash safety: the daemon as a real process is SIGKILLed again and again under a stream of calls
and restarted on the same database; in the end retailCRM holds exactly what the delivery
contract promises (see ``tests/delivery.py``: one record per call, cards in order, a card repeated
only when a kill caught it in flight).

The kills fall at random moments of a seeded schedule covering: steady traffic; deliveries held
by retailCRM ("hang": the requests are on the wire when the process dies); retailCRM storing a
call but answering slowly (the answer never arrives: the daemon must send again and retailCRM
must see a duplicate); a burst of notifications with the kill right behind it (the process dies
inside its SQLite transactions); and a kill right after start-up, while pending work resumes.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.delivery import Interruption, Stream, check_contract, doubtful_popups
from tests.procs import ROOT, free_port, wait_healthy, write_config
from tests.support import SECRET, open_sims

WORKERS = 4
SCHEDULE = [  # (what is going on when the kill comes, seconds of traffic before it)
    ("steady", 0.6), ("hang", 0.5), ("burst", 0.2), ("slow", 0.5), ("startup", 0.0),
    ("steady", 0.3), ("hang", 0.8), ("burst", 0.4), ("slow", 0.3), ("steady", 1.0),
    ("startup", 0.1), ("hang", 0.3),
]


def pending_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        count = conn.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
    conn.close()
    return int(count)


# httpx leaves the body iterator of a request cut by a dying server to the garbage collector.
@pytest.mark.filterwarnings("ignore:Exception ignored in. <async_generator object ByteStream"
                            ":pytest.PytestUnraisableExceptionWarning")
async def test_sigkill_at_random_points_loses_and_doubles_nothing(tmp_path):
    rng = random.Random(20240517)
    db = tmp_path / "tracker.db"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    kills: list[Interruption] = []
    held_at_kill = 0
    with trio.fail_after(100):
        async with open_sims() as sims:
            config = write_config(
                tmp_path / "tracker.toml", db=db, uis_url=sims.uis_url, crm_url=sims.crm_url,
                port=port, outbox={"workers": WORKERS, "retry_base_seconds": 0.05,
                                   "retry_max_seconds": 0.3},
                uis={"record_wait_seconds": 1}, crm={"timeout_seconds": 1},
                reconcile={"enabled": False})
            crm = sims.crm
            stream = Stream(sims.uis, f"{url}/webhooks/uis/{SECRET}", first_session=40_000_000)
            stop_calls = trio.Event()
            alive: list[trio.Process] = []

            async def start(trial: int) -> trio.Process:
                # the process writes its log there (a real file descriptor, so a plain open)
                log = open(tmp_path / f"daemon-{trial}.log", "wb")  # noqa: ASYNC230, SIM115
                process = await trio.lowlevel.open_process(
                    [sys.executable, "run.py", "serve", "--config", str(config)], cwd=ROOT,
                    stdout=log, stderr=log)
                log.close()
                alive[:] = [process]
                with trio.fail_after(20):
                    await wait_healthy(client, url)
                return process

            async with httpx.AsyncClient(timeout=2) as client, trio.open_nursery() as nursery:
                nursery.start_soon(_reap, alive)
                await nursery.start(stream.run, stop_calls)
                for trial, (mode, traffic) in enumerate(SCHEDULE):
                    process = await start(trial)
                    if kills:
                        kills[-1] = Interruption(kills[-1].before, len(crm.requests))
                    if mode == "hang":
                        crm.fault = "hang"
                    elif mode == "slow":
                        crm.answer_delay_seconds = 0.4
                    await trio.sleep(traffic * rng.uniform(0.5, 1.5))
                    if mode == "burst":
                        nursery.start_soon(stream.burst, 20, client)
                        await trio.sleep(rng.uniform(0.005, 0.03))
                    held_at_kill += crm.hanging > 0
                    process.send_signal(signal.SIGKILL)
                    await process.wait()
                    kills.append(Interruption(len(crm.requests), len(crm.requests)))
                    crm.fault = None
                    crm.answer_delay_seconds = 0.0

                # The last start: the stream ends, everything is delivered, a clean stop.
                process = await start(len(SCHEDULE))
                kills[-1] = Interruption(kills[-1].before, len(crm.requests))
                stop_calls.set()
                await crm.wait_for(lambda: stream.in_progress == 0, timeout=30)
                await crm.wait_for(lambda: not pending_rows(db) and
                                   len(crm.uploaded) == len(stream.calls), timeout=30)
                process.send_signal(signal.SIGTERM)
                assert await process.wait() == 0
                nursery.cancel_scope.cancel()  # the reaper

    with sqlite3.connect(db) as conn:
        doubtful = doubtful_popups(conn)
    conn.close()
    report = check_contract(crm, stream.calls, interruptions=kills, in_flight=WORKERS,
                            doubtful=doubtful)
    assert report.problems == [], "\n".join(report.problems)
    assert len(stream.calls) >= 60, "too little traffic to mean anything"
    assert stream.retries > 0 and held_at_kill >= 2  # kills did catch work in flight
    assert report.repeats <= WORKERS * len(kills)
    assert report.card_events > len(stream.calls)  # cards did pop up, not only get dropped
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, count(*) FROM calls GROUP BY state"))
        statuses = dict(conn.execute("SELECT status, count(*) FROM outbox GROUP BY status"))
    conn.close()
    assert set(states) <= {"ended", "lost"} and sum(states.values()) == len(stream.calls)
    assert set(statuses) <= {"delivered", "dropped"}, statuses


async def _reap(alive: list[trio.Process]) -> None:
    """Kill the daemon of a failed or cancelled test: no process outlives it."""
    try:
        await trio.sleep_forever()
    finally:
        for process in alive:
            if process.returncode is None:
                process.kill()

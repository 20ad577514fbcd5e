"""The daemon as a real process: SIGTERM under webhook load stops fast and loses nothing."""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import trio

from tests.procs import free_port, wait_healthy, write_config
from tests.support import SECRET, open_daemon, open_sims, settings_for

ROOT = Path(__file__).resolve().parent.parent


# A request the stopping daemon cuts off mid-send leaves httpx's own body generator unfinished;
# its ResourceWarning is about the client library, not the daemon under test.
@pytest.mark.filterwarnings("ignore:Async generator 'httpx._content.ByteStream.__aiter__'")
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object ByteStream.__aiter__"
    ":pytest.PytestUnraisableExceptionWarning")
async def test_sigterm_under_load_stops_quickly_and_keeps_every_acknowledged_notification(tmp_path):
    acknowledged: list[int] = []
    refused = 0
    server_errors: list[int] = []
    with trio.fail_after(60):
        async with open_sims() as sims:
            sims.crm.fault = "hang"  # deliveries stay pending: the restart must finish them
            port = free_port()
            db = tmp_path / "tracker.db"
            config = tmp_path / "tracker.toml"
            write_config(config, db=db, uis_url=sims.uis_url, crm_url=sims.crm_url, port=port,
                         outbox={"retry_base_seconds": 0.05, "retry_max_seconds": 0.5})
            url = f"http://127.0.0.1:{port}"
            process = await trio.lowlevel.open_process(
                [sys.executable, "run.py", "serve", "--config", str(config)], cwd=ROOT)
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    with trio.fail_after(20):
                        await wait_healthy(client, url)

                    async def load(worker: int) -> None:
                        nonlocal refused
                        for i in range(100_000):
                            session = 10_000_000 + worker * 100_000 + i
                            body = json.dumps({"event": "lost_call", "call_session_id": session,
                                               "contact_phone_number": "79991234567",
                                               "wait_time_duration": 3})
                            try:
                                response = await client.post(
                                    f"{url}/webhooks/uis/{SECRET}", content=body,
                                    headers={"content-type": "application/json"})
                            except httpx.TransportError:
                                refused += 1
                                return
                            if response.status_code == 200:
                                acknowledged.append(session)
                            elif response.status_code >= 500:
                                server_errors.append(response.status_code)

                    async with trio.open_nursery() as nursery:
                        for worker in range(8):
                            nursery.start_soon(load, worker)
                        await trio.sleep(1.5)
                        sent_at = time.monotonic()
                        process.send_signal(signal.SIGTERM)
                        with trio.fail_after(10):
                            code = await process.wait()
                        stopped_after = time.monotonic() - sent_at
                        # the load tasks end by themselves on their first refused connection
            finally:
                if process.returncode is None:
                    process.kill()
            sims.crm.fault = None

            assert code == 0
            assert stopped_after < 3.0, f"took {stopped_after:.2f}s to stop"
            assert len(acknowledged) > 50, "the load did not get going"
            assert server_errors == []
            with sqlite3.connect(db) as conn:
                stored = {row[0] for row in conn.execute(
                    "SELECT call_id FROM events WHERE outcome = 'accepted'")}
            assert set(acknowledged) <= stored

            # A restart on the same database delivers every acknowledged call exactly once.
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            async with open_daemon(sims, settings) as daemon:
                with trio.fail_after(30):
                    await sims.crm.wait_for(
                        lambda: all(str(s) in sims.crm.uploaded for s in acknowledged))
                    await daemon.settle()
            uploaded = Counter(str(item["externalId"]) for r in sims.crm.requests
                               if r.endpoint == "telephony/calls/upload" and r.status == 200
                               for item in r.data["calls"])
            assert {uploaded[str(s)] for s in acknowledged} == {1}

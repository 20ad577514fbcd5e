"""A retailCRM outage during a stream of calls: first it refuses connections, then answers 503 with
an HTML page, then takes every request and never answers. Each stretch shows on ``/healthz`` and
the status page while it lasts; once retailCRM is back, everything is delivered exactly once and
in per-call order (the contract of ``tests/delivery.py``). Two moments can lose an answer that
retailCRM had already acted on, which the contract lets tracker heal only by sending again:
stopping the server cuts requests it was answering, and requests held past tracker's timeout are
let go when the outage ends. Outside those moments no card event may be repeated.
"""

from __future__ import annotations

import trio

from tests.delivery import Interruption, Stream, check_contract, doubtful_popups
from tests.support import CRM_KEY, UIS_TOKEN, Sims, open_daemon, settings_for
from tracker.simulators import CrmSimulator, RestartableServer, UisSimulator
from tracker.web.httpserve import serve_app

# (stretch, what the daemon's last error says during it)
STRETCHES = [
    ("refused", "ConnectError"),
    ("503", "HTTP 503"),
    ("hang", "timed out"),
]


async def test_crm_outage_is_visible_and_everything_is_delivered_once_afterwards(tmp_path):
    uis = UisSimulator(UIS_TOKEN)
    crm = CrmSimulator(CRM_KEY, known_codes={"101", "102", "103"}, known_user_ids={1, 2, 3})
    seen: dict[str, dict] = {}
    interruptions: list[Interruption] = []
    with trio.fail_after(80):
        async with trio.open_nursery() as servers:
            uis_url = await servers.start(serve_app, uis.app)
            crm_server = RestartableServer(crm.app, servers)
            crm_url = await crm_server.start()
            settings = settings_for(
                tmp_path, uis_url, crm_url, crm={"timeout_seconds": 0.5},
                uis={"record_wait_seconds": 1}, ratelimit={"recovery_seconds": 3},
                admin={"allow_loopback_without_key": True}, reconcile={"enabled": False})
            async with open_daemon(Sims(uis, crm, uis_url, crm_url), settings) as d:
                stream = Stream(uis, d.webhook, first_session=60_000_000, senders=4)
                stop_calls = trio.Event()

                async def health() -> dict:
                    return (await d.client.get(f"{d.url}/healthz")).json()

                async with trio.open_nursery() as traffic:
                    await traffic.start(stream.run, stop_calls)
                    await crm.wait_for(lambda: len(crm.uploaded) >= 3, timeout=10)
                    assert (await health())["status"] == "ok"
                    for stretch, words in STRETCHES:
                        if stretch == "refused":
                            before = len(crm.requests)
                            await crm_server.stop()
                            interruptions.append(Interruption(before, len(crm.requests)))
                        else:
                            await crm_server.start()
                            crm.fault = stretch
                        with trio.fail_after(10):
                            while True:
                                state = await health()
                                if state["status"] == "degraded" and \
                                        words in (state["outbox"]["last_error"] or ""):
                                    break
                                await trio.sleep(0.05)
                        page = (await d.client.get(f"{d.url}/")).text
                        assert "Last delivery error" in page and words in page
                        await trio.sleep(1.0)  # calls keep coming while it lasts
                        seen[stretch] = await health()
                    before = len(crm.requests)
                    crm.fault = None  # the held requests are answered: to a client gone or not
                    await trio.sleep(0.2)
                    interruptions.append(Interruption(before, len(crm.requests)))
                    stop_calls.set()
                await crm.wait_for(lambda: not d.count("outbox", "status = 'pending'") and
                                   len(crm.uploaded) == len(stream.calls), timeout=40)
                recovered = await health()
                doubtful = doubtful_popups(d.ctx.store.conn)
                dead = d.count("outbox", "status = 'dead'")
            servers.cancel_scope.cancel()

    assert seen["refused"]["outbox"]["pending"] > 0
    assert seen["503"]["rate_limits"]["retailCRM"]["slowdown"] < 1.0  # throttled by the 503s
    assert seen["hang"]["outbox"]["consecutive_failures"] > 0
    assert recovered["status"] == "ok" and recovered["outbox"]["consecutive_failures"] == 0
    report = check_contract(crm, stream.calls, interruptions=interruptions, doubtful=doubtful)
    assert report.problems == [], "\n".join(report.problems)
    assert report.repeats <= 2 * settings.outbox.workers
    assert len(stream.calls) >= 20 and report.card_events > 0
    assert dead == 0

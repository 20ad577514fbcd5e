"""History uploads due together go in batches; failures of a batch lose and double nothing.

Each test leaves uploads pending in a first daemon (retailCRM answering 503), waits until every
retry is due, and starts a second daemon on the same database: its first dispatch sees them all.
"""

from __future__ import annotations

import json
from collections import Counter

import trio

from tests.support import ANNA, open_daemon, open_sims, settings_for, start_time
from tracker.simulators import scenarios

FIRST = 700_000_001


def upload_sizes(crm) -> list[tuple[int, int]]:
    """(items, status) of every upload request, in order."""
    return [(len(r.data.get("calls") or []), r.status) for r in crm.requests
            if r.endpoint == "telephony/calls/upload"]


def stored(crm) -> Counter:
    """How many times retailCRM stored each externalId (its records, not the wire)."""
    return Counter(str(c.get("externalId")) for c in crm.calls)


async def pile_up(sims, settings, sessions: list[int], *, no_phone: set[int] = frozenset()) -> None:
    """Commit a lost call per session while retailCRM answers 503; return with all pending."""
    sims.crm.fault = "503"
    async with open_daemon(sims, settings) as d:
        for session in sessions:
            if session in no_phone:  # UIS left the caller's number out: an invalid history item
                response = await d.post({"event": "lost_call", "call_session_id": session,
                                         "wait_time_duration": 3})
                assert response.status_code == 200
            else:
                await d.play(scenarios.lost_in_ivr(session, start=start_time()), settle=False)
        assert d.count("outbox", "status = 'pending'") == len(sessions)
    sims.crm.fault = None
    sims.crm.requests.clear()
    await trio.sleep(settings.outbox.retry_max_seconds * 1.3)  # every retry is due now


def batch_settings(tmp_path, sims, **ratelimit):
    return settings_for(tmp_path, sims.uis_url, sims.crm_url,
                        ratelimit={"upload_batch_size": 5, **ratelimit}, outbox={"workers": 4})


async def test_uploads_due_together_go_in_batches_of_at_most_the_batch_size(tmp_path):
    sessions = [FIRST + i for i in range(12)]
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = batch_settings(tmp_path, sims)
            await pile_up(sims, settings, sessions)
            async with open_daemon(sims, settings) as d:
                await sims.crm.wait_for(lambda: len(sims.crm.uploaded) == 12)
                await d.settle()
                # three workers may carry uploads (one stays free for cards): 5 + 5 + 2
                assert sorted(upload_sizes(sims.crm)) == [(2, 200), (5, 200), (5, 200)]
                assert stored(sims.crm) == Counter({str(s): 1 for s in sessions})
                assert d.count("outbox", "status = 'delivered'") == 12
                row = d.ctx.store.outbox_for(FIRST)[0]
                request = json.loads(row["request"])
                assert request["batch_size"] in (2, 5)
                assert [c["externalId"] for c in request["form"]["calls"]] == [str(FIRST)]
                stats = d.ctx.outbox.statistics()
                assert (stats.batches_total, stats.batched_rows_total) == (3, 12)


async def test_one_invalid_item_sends_the_batch_again_one_by_one(tmp_path):
    sessions = [FIRST + i for i in range(5)]
    bad = FIRST + 2
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = batch_settings(tmp_path, sims)
            await pile_up(sims, settings, sessions, no_phone={bad})
            async with open_daemon(sims, settings) as d:
                await sims.crm.wait_for(lambda: len(sims.crm.uploaded) == 4)
                await d.settle()
                assert upload_sizes(sims.crm) == [(5, 400)] + [(1, 200)] * 2 + [(1, 400)] + \
                    [(1, 200)] * 2
                assert stored(sims.crm) == Counter({str(s): 1 for s in sessions if s != bad})
                [dead] = d.ctx.store.dead_letters()
                assert dead["call_id"] == bad and "phone" in dead["last_error"]
                assert d.count("outbox", "status = 'delivered'") == 4


async def test_items_retailcrm_skips_silently_are_checked_one_by_one(tmp_path):
    sessions = [FIRST + i for i in range(4)]
    skipped = FIRST + 1
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = batch_settings(tmp_path, sims)
            await pile_up(sims, settings, sessions)
            sims.crm.ignore_external_ids.add(str(skipped))
            async with open_daemon(sims, settings) as d:
                await sims.crm.wait_for(lambda: d.ctx.store.dead_letters())
                await d.settle()
                # the batch, then each item not reported as stored or duplicate, alone
                assert upload_sizes(sims.crm) == [(4, 200)] + [(1, 200)] * 4
                assert stored(sims.crm) == Counter({str(s): 1 for s in sessions if s != skipped})
                [dead] = d.ctx.store.dead_letters()
                assert dead["call_id"] == skipped and "stored nothing" in dead["last_error"]
                delivered = [d.ctx.store.outbox_for(s)[0] for s in sessions if s != skipped]
                assert {r["status"] for r in delivered} == {"delivered"}


async def test_a_batch_whose_answer_is_lost_is_sent_again_and_stored_once(tmp_path):
    """retailCRM stores the batch but its answer comes after the client's timeout."""
    sessions = [FIRST + i for i in range(5)]
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url,
                                    ratelimit={"upload_batch_size": 5},
                                    crm={"timeout_seconds": 0.3})
            await pile_up(sims, settings, sessions)
            sims.crm.answer_delay_seconds = 1.0
            async with open_daemon(sims, settings) as d:
                await sims.crm.wait_for(lambda: len(sims.crm.uploaded) == 5)
                sims.crm.answer_delay_seconds = 0.0
                await sims.crm.wait_for(lambda: d.count("outbox", "status = 'delivered'") == 5, 10)
                assert stored(sims.crm) == Counter({str(s): 1 for s in sessions})
                sizes = upload_sizes(sims.crm)
                assert sizes[0] == (5, 200) and len(sizes) >= 2  # sent again after the timeout
                rows = [d.ctx.store.outbox_for(s)[0] for s in sessions]
                assert all("duplicateCalls" in (r["last_error"] or "") for r in rows)


async def test_a_batch_refused_with_503_is_retried_whole_and_delivered_once(tmp_path):
    sessions = [FIRST + i for i in range(5)]
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = batch_settings(tmp_path, sims)
            await pile_up(sims, settings, sessions)
            sims.crm.fail_next("503")
            async with open_daemon(sims, settings) as d:
                await sims.crm.wait_for(lambda: len(sims.crm.uploaded) == 5)
                await d.settle()
                sizes = upload_sizes(sims.crm)
                assert sizes[0] == (5, 503)
                assert sum(n for n, status in sizes if status == 200) == 5
                assert stored(sims.crm) == Counter({str(s): 1 for s in sessions})
                assert all(r["attempts"] >= 2 for s in sessions
                           for r in d.ctx.store.outbox_for(s))


async def test_a_live_call_card_overtakes_a_backlog_of_uploads(tmp_path):
    """Uploads one per request at 4/s, seven workers' worth queued at the rate limit: the pop-up
    of a call ringing now goes at the next free moment, not after the queued uploads."""
    sessions = [FIRST + i for i in range(14)]
    live = FIRST + 100
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, outbox={"workers": 8},
                                    ratelimit={"upload_batch_size": 1,
                                               "crm_telephony_per_second": 4})
            await pile_up(sims, settings, sessions)
            async with open_daemon(sims, settings) as d:
                await sims.crm.wait_for(lambda: len(sims.crm.uploaded) >= 2)
                assert d.ctx.crm.gate.waiting() >= 6  # uploads queue at the rate limit
                scenario = scenarios.answered(live, start=start_time(), employee=ANNA)
                for notification in scenario.notifications[:2]:  # incoming, waiting_answer
                    await sims.uis.send_notification(notification, d.webhook, d.client)
                queued_before = len(sims.crm.uploaded)
                await sims.crm.wait_for(lambda: d.events_for(live), 10)
                assert len(sims.crm.uploaded) <= queued_before + 2
                await sims.crm.wait_for(lambda: len(sims.crm.uploaded) == 14, 20)

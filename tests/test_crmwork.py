"""Calls become CRM work: customers for new callers, a call-back task per missed number, completed
when the customer is reached, and where the caller came from — the real daemon against both
simulators."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import trio

from tests.support import ANNA, BORIS, VERA, open_daemon, open_sims, settings_for, start_time
from tracker.db import maintenance, pagedata
from tracker.simulators import scenarios

SESSION = 70_000_001
CALLER = "79991234567"
WORK = {
    "customers": {"create": True},
    "tasks": {"missed_calls": True, "complete_on_reach": True, "fallback_performer_id": 3},
    "attribution": {"enabled": True},
}
TRACKED = {"campaign_name": "Spring sale", "utm_source": "yandex", "utm_medium": "cpc",
           "utm_campaign": "spring", "utm_term": "buy shoes", "utm_content": "banner-2",
           "search_query": "shoes moscow", "ua_client_id": "123.456", "ym_client_id": "789"}


def sections(**overrides: dict) -> dict[str, dict]:
    out = {k: dict(v) for k, v in WORK.items()}
    for section, values in overrides.items():
        out.setdefault(section, {}).update(values)
    return out


def lost(session: int, *, minutes: float = 0, ringing=(ANNA, BORIS), contact: str = CALLER):
    return scenarios.ring_group_lost(session, start=start_time() + timedelta(minutes=minutes),
                                     ringing=list(ringing), contact=contact)


def figures(d, minutes: float) -> dict:
    """The status page's call-back figures, ``minutes`` after the first call started."""
    moment = (start_time() + timedelta(minutes=minutes)).replace(tzinfo=ZoneInfo("Europe/Moscow"))
    return pagedata.callbacks(d.ctx.store.conn, now=moment.timestamp(), tz=d.ctx.tz,
                              target_minutes=d.settings.tasks.callback_target_minutes)


async def test_unknown_caller_missed_makes_one_customer_and_one_task(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                await d.play(lost(SESSION))
                await d.settle()
                crm = sims.crm
                [customer] = crm.customers.values()
                assert customer["phones"] == [{"number": "+79991234567"}]
                assert customer["externalId"] == "uis-79991234567"
                assert "managerId" not in customer  # nobody talked to them
                [task] = crm.tasks.values()
                assert task["performerId"] == 2  # Boris: the last employee it rang
                assert task["customer"] == {"id": customer["id"]}
                assert task["phone"] == "+79991234567"
                assert task["text"] == "Call back +79991234567"
                assert task["datetime"] == "2024-05-17 14:03"
                assert f"UIS call {SESSION}" in task["commentary"] and not task["complete"]
                # the call was uploaded as before, and the work is on the call's timeline
                assert len(d.uploads_for(SESSION)) == 1
                kinds = [(r["kind"], r["status"]) for r in d.ctx.store.outbox_for(SESSION)]
                assert ("crm_customer", "delivered") in kinds
                assert ("crm_task", "delivered") in kinds
                # the status page's figures: one miss, not returned yet
                waiting = figures(d, 1)
                assert [m["call_id"] for m in waiting["open"]] == [SESSION]
                assert waiting["today"]["missed"] == 1 and waiting["today"]["returned"] == 0


async def test_same_caller_missed_twice_keeps_one_task_with_both_misses(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                await d.play(lost(SESSION))
                await d.play(lost(SESSION + 1, minutes=5, ringing=[VERA]))
                await d.settle()
                assert len(sims.crm.customers) == 1
                [task] = sims.crm.tasks.values()
                assert f"UIS call {SESSION}" in task["commentary"]
                assert f"UIS call {SESSION + 1}" in task["commentary"]
                assert task["performerId"] == 2  # the first miss's performer stays
                edits = [r for r in sims.crm.requests if r.endpoint.startswith("tasks/")
                         and r.endpoint.endswith("/edit")]
                assert len(edits) == 1 and edits[0].status == 200


async def test_manager_calls_back_and_talks_completes_the_task(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                await d.play(lost(SESSION))
                back = scenarios.outbound(SESSION + 1, start=start_time() + timedelta(minutes=7),
                                          employee=ANNA, contact=CALLER)
                await d.play(back)
                await d.settle()
                [task] = sims.crm.tasks.values()
                assert task["complete"] is True
                assert "called back by 101, 7 min after the miss" in task["commentary"]
                assert len(sims.crm.customers) == 1  # an outgoing call makes no customer
                seen = figures(d, 8)
                assert seen["open"] == []
                assert seen["today"]["returned"] == 1
                assert seen["today"]["median_minutes"] == 7.0
                assert seen["today"]["within_target_share"] == 1.0
                page = (await d.client.get(f"{d.url}/", headers=d.page_headers())).text
                assert "Call-backs" in page


async def test_customer_calls_again_and_gets_through_completes_the_task(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                await d.play(lost(SESSION))
                again = scenarios.answered(SESSION + 1, employee=VERA, contact=CALLER,
                                           start=start_time() + timedelta(minutes=30))
                await d.play(again)
                await d.settle()
                [task] = sims.crm.tasks.values()
                assert task["complete"] is True
                assert "called again and got through by 103, 30 min" in task["commentary"]
                [customer] = sims.crm.customers.values()
                assert "managerId" not in customer  # found, not made again
                assert d.count("crm_tasks", "completed_call_id = ?", SESSION + 1) == 1


async def test_duplicate_notifications_and_simultaneous_calls_make_one_customer(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                first, second = lost(SESSION), lost(SESSION + 1, ringing=[VERA])
                async with trio.open_nursery() as nursery:  # the same number, the same moment
                    nursery.start_soon(lambda: d.play(first, settle=False))
                    nursery.start_soon(lambda: d.play(second, settle=False))
                await d.play(first, settle=False)  # every notification again
                await d.settle()
                assert len(sims.crm.customers) == 1
                assert len(sims.crm.tasks) == 1
                creates = [r for r in sims.crm.requests if r.endpoint == "customers/create"]
                assert len(creates) == 1


async def test_crm_503_for_a_while_then_everything_once_in_order(tmp_path):
    with trio.fail_after(40):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections(),
                                    ratelimit={"recovery_seconds": 1})
            async with open_daemon(sims, settings) as d:
                sims.crm.fault = "503"
                await d.play(lost(SESSION), settle=False)
                await d.play(lost(SESSION + 1, minutes=2), settle=False)
                await trio.sleep(2.0)
                assert sims.crm.customers == {} and sims.crm.tasks == {}
                sims.crm.fault = None
                await sims.crm.wait_for(lambda: not d.count("outbox", "status = 'pending'"),
                                        timeout=25)
                assert len(sims.crm.customers) == 1
                [task] = sims.crm.tasks.values()
                lines = task["commentary"].splitlines()
                assert [f"UIS call {SESSION}" in lines[0], f"UIS call {SESSION + 1}" in lines[1]] \
                    == [True, True]
                assert d.count("outbox", "status = 'dead'") == 0


async def test_lost_answer_of_the_create_is_healed_by_the_marker(tmp_path):
    """retailCRM stores the customer but its answer never arrives (as after a crash between
    the create and its record): the retry finds the customer by its externalId."""
    with trio.fail_after(40):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections(),
                                    crm={"timeout_seconds": 0.5})
            async with open_daemon(sims, settings) as d:
                sims.crm.answer_delay_seconds = 1.0
                sims.crm.delay_only = {"customers/create"}
                await d.play(lost(SESSION), settle=False)
                await sims.crm.wait_for(lambda: sims.crm.customers, timeout=10)
                sims.crm.answer_delay_seconds = 0.0
                await sims.crm.wait_for(lambda: sims.crm.tasks, timeout=15)
                await d.settle()
                assert len(sims.crm.customers) == 1 and len(sims.crm.tasks) == 1
                assert d.count("crm_customers") == 1


async def test_refused_customer_still_uploads_and_tasks_without_customer(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                sims.crm.refuse_customers = {"phones[0].number": "Invalid phone number."}
                await d.play(lost(SESSION))
                await d.settle()
                assert len(d.uploads_for(SESSION)) == 1
                [dead] = [r for r in d.ctx.store.outbox_for(SESSION) if r["status"] == "dead"]
                assert dead["kind"] == "crm_customer" and "Invalid phone" in dead["last_error"]
                [task] = sims.crm.tasks.values()
                assert "customer" not in task and task["phone"] == "+79991234567"
                # what `run.py outbox list` prints, and the call's timeline
                listing = maintenance.format_dead_letters(maintenance.dead_letters(d.ctx.store))
                assert "crm_customer" in listing and "Invalid phone number" in listing
                page = await d.client.get(f"{d.url}/calls/{SESSION}", headers=d.page_headers())
                assert "crm_customer" in page.text and "Invalid phone number" in page.text


async def test_inactive_performer_falls_back_with_a_warning(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                sims.crm.inactive_user_ids = {2}
                await d.play(lost(SESSION))
                await d.settle()
                [task] = sims.crm.tasks.values()
                assert task["performerId"] == 3  # tasks.fallback_performer_id
                warnings = {(w["kind"], w["subject"]) for w in d.ctx.store.warnings()}
                assert ("task_performer", "retailCRM user 2") in warnings


async def test_anonymous_and_unparsable_callers(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                await d.play(lost(SESSION, contact="anonymous"))
                await d.play(lost(SESSION + 1, contact="5556"))  # short: a task, no customer
                await d.settle()
                assert sims.crm.customers == {}
                [task] = sims.crm.tasks.values()
                assert task["phone"] == "5556" and "customer" not in task


async def test_attribution_reaches_the_upload_and_the_customer(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections())
            async with open_daemon(sims, settings) as d:
                await d.play(scenarios.with_attribution(lost(SESSION), **TRACKED))
                await d.settle()
                source = {"source": "yandex", "medium": "cpc", "campaign": "spring",
                          "keyword": "buy shoes", "content": "banner-2"}
                [upload] = d.uploads_for(SESSION)
                assert upload["source"] == source and upload["clientId"] == "123.456"
                [customer] = sims.crm.customers.values()
                assert customer["source"] == source
                partial = scenarios.with_attribution(lost(SESSION + 1, contact="79990000001"),
                                                     campaign_name="Brand", search_query="shop")
                await d.play(partial)
                await d.settle()
                [upload] = d.uploads_for(SESSION + 1)
                assert upload["source"] == {"campaign": "Brand", "keyword": "shop"}
                assert "clientId" not in upload  # missing fields are left out, never empty


async def test_switching_each_key_off_sends_none_of_it(tmp_path):
    with trio.fail_after(40):
        async with open_sims() as sims:
            off = sections(customers={"create": False}, attribution={"enabled": False},
                           tasks={"missed_calls": False, "complete_on_reach": False})
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **off)
            async with open_daemon(sims, settings) as d:
                await d.play(scenarios.with_attribution(lost(SESSION), **TRACKED))
                await d.play(scenarios.answered(SESSION + 1, employee=ANNA, contact=CALLER,
                                                start=start_time() + timedelta(minutes=3)))
                await d.settle()
                endpoints = {r.endpoint for r in sims.crm.requests}
                assert endpoints <= {"telephony/call/event", "telephony/calls/upload"}
                assert all("source" not in u for u in d.uploads_for(SESSION))
                assert not [r for r in sims.uis.rpc_requests
                            if r.get("method") == "get.calls_report"]
            # customers alone: a customer, no task, no source
            only = sections(attribution={"enabled": False},
                            tasks={"missed_calls": False, "complete_on_reach": False})
            settings = settings_for(tmp_path / "2", sims.uis_url, sims.crm_url, **only)
            async with open_daemon(sims, settings) as d:
                await d.play(scenarios.with_attribution(lost(SESSION + 2, contact="79990000002"),
                                                        **TRACKED))
                await d.settle()
                assert sims.crm.tasks == {}
                [customer] = sims.crm.customers.values()
                assert "source" not in customer


async def test_order_for_a_new_caller_who_talked(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url,
                                    **sections(orders={"create_for_new_callers": True}))
            async with open_daemon(sims, settings) as d:
                await d.play(scenarios.with_attribution(
                    scenarios.answered(SESSION, employee=BORIS, start=start_time()), **TRACKED))
                await d.play(scenarios.answered(SESSION + 1, employee=BORIS,
                                                start=start_time() + timedelta(hours=1)))
                await d.settle()
                [customer] = sims.crm.customers.values()
                assert customer["managerId"] == 2
                [order] = sims.crm.orders.values()  # the second call is not a new caller
                assert order["customer"] == {"id": customer["id"]}
                assert order["orderMethod"] == "phone" and order["managerId"] == 2
                assert order["externalId"] == f"uis-call-{SESSION}"
                assert order["source"]["source"] == "yandex"

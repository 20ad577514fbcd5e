"""retailCRM orders into UIS's end-to-end analytics: the real daemon against both simulators."""

from __future__ import annotations

import bisect
import io
import json
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import trio

from tests.support import ANNA, CRM_KEY, UIS_TOKEN, open_daemon, open_sims, settings_for
from tracker.cli import check
from tracker.cli import deals as cli_deals
from tracker.core import deals as model
from tracker.db import pagedata
from tracker.simulators import scenarios
from tracker.web import page

SESSION = 3_100_000_123
TZ = ZoneInfo("Europe/Moscow")
ON = {"enabled": True, "poll_seconds": 60}


def _now() -> datetime:
    return datetime.now(TZ).replace(tzinfo=None, microsecond=0)


async def _pass(d) -> None:
    with trio.fail_after(10):
        await d.deals.wait_next_pass()
    await d.settle()


def _at(seconds: int) -> str:
    """A moment shortly after now, as retailCRM writes it (entries come in time order)."""
    return (_now() + timedelta(seconds=seconds)).strftime("%Y-%m-%d %H:%M:%S")


def _stages(rows: list[dict]) -> list[str]:
    return [r["stage_ext_id"] for r in rows]


async def test_order_created_after_a_call_is_one_deal_linked_to_that_session(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON)
            async with open_daemon(sims, settings) as d:
                await d.play(scenarios.answered(SESSION, start=_now() - timedelta(minutes=10),
                                                employee=ANNA))
                order_id = sims.crm.order_book.create_order(phone="8 (999) 123-45-67", total=4200)
                await _pass(d)
                rows = sims.uis.deals.history(str(order_id))
                assert len(rows) == 1
                row = rows[0]
                assert row["communication_id"] == SESSION
                assert row["communication_type"] == "call"
                assert row["stage_ext_id"] == "new" and row["price"] == 4200
                customer = str(sims.crm.order_book.orders[order_id]["customer"]["id"])
                assert row["main_contact_ext_id"] == customer
                assert sims.uis.deals.contacts[customer]["phone_numbers"] == ["8 (999) 123-45-67"]
                assert row["responsible_ext_id"] == "1" and "1" in sims.uis.deals.responsibles
                funnel = sims.uis.deals.funnels[model.FUNNEL_EXT_ID]
                assert [s["ext_id"] for s in funnel["stages"]["in_process"]] == [
                    "new", "availability-confirmed", "assembling", "send-to-delivery"]
                assert funnel["stages"]["success"]["ext_id"] == "won"
                # the structure went first, once; a second pass sends nothing new
                await _pass(d)
                methods = [r["method"] for r in sims.uis.rpc_requests
                           if r.get("method", "").endswith(("sales_funnel", "deal_employees"))]
                assert methods == ["create.sales_funnel", "create.deal_employees"]
                assert len(sims.uis.deals.uploads) == 1
                # a new retailCRM status and a renamed user reach UIS at the next pass
                before = len(sims.uis.rpc_requests)
                sims.crm.order_book.add_status("prepayed", "Предоплата", "approval", ordering=20)
                sims.crm.order_book.users[2]["lastName"] = "Renamed"
                await _pass(d)
                funnel = sims.uis.deals.funnels[model.FUNNEL_EXT_ID]
                assert "prepayed" in [s["ext_id"] for s in funnel["stages"]["in_process"]]
                assert sims.uis.deals.responsibles["2"]["name"] == "Manager2 Renamed"
                updates = [r for r in sims.uis.rpc_requests[before:] if r.get("method") in (
                    "update.sales_funnel", "create.deal_employees")]
                assert [r["method"] for r in updates] == ["update.sales_funnel",
                                                          "create.deal_employees"]
                assert updates[1]["params"]["employees"] == [{"ext_id": "2",
                                                              "name": "Manager2 Renamed"}]


async def test_order_through_three_statuses_to_complete_is_one_won_deal(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON)
            book = sims.crm.order_book
            async with open_daemon(sims, settings) as d:
                order_id = book.create_order(total=2500, email="buyer@shop.test")
                book.set_status(order_id, "availability-confirmed", at=_at(1))
                await _pass(d)
                book.set_status(order_id, "assembling", at=_at(2))
                book.set_status(order_id, "send-to-delivery", at=_at(3))
                book.set_field(order_id, "totalSumm", 2700, at=_at(4))
                closed = _at(5)
                book.set_status(order_id, "complete", at=closed)
                await _pass(d)
                rows = sims.uis.deals.history(str(order_id))
                assert {r["ext_id"] for r in rows} == {str(order_id)}
                assert sorted(_stages(rows)) == sorted(
                    ["new", "availability-confirmed", "assembling", "send-to-delivery", "won"])
                won = [r for r in rows if r["stage_ext_id"] == "won"]
                assert won[0]["closed_date_time"] == closed
                assert won[0]["price"] == 2700
                assert all("closed_date_time" not in r for r in rows if r not in won)
                # five stage rows and one amount update went out, nothing twice
                sent = [r for batch in sims.uis.deals.uploads for r in batch]
                assert len(sent) == 6
                assert d.count("deal_transitions", "order_id = ?", order_id) == 6


async def test_restart_midway_reads_and_uploads_nothing_twice(tmp_path):
    with trio.fail_after(40):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON)
            book = sims.crm.order_book
            first = [book.create_order(phone=f"+7999000000{i}") for i in range(3)]
            async with open_daemon(sims, settings) as d:
                # UIS keeps failing the uploads: they are still queued when the daemon stops
                sims.uis.fail_next("upload.deals_history", "internal_error", -32603, 1000)
                await d.deals.wait_next_pass()
                await sims.uis.wait_for_rpc("upload.deals_history")
            sims.uis._faults.clear()
            reads_before = [r for r in sims.crm.requests if r.endpoint == "orders/history"]
            last_seen = max(e["id"] for e in book.history)
            for order_id in first:
                book.set_status(order_id, "assembling")
            second = book.create_order(phone="+79990000009")
            async with open_daemon(sims, settings) as d:
                await _pass(d)
            reads_after = [r for r in sims.crm.requests if r.endpoint == "orders/history"]
            resumed = reads_after[len(reads_before)]
            assert resumed.query["filter[sinceId]"] == str(last_seen)
            sent = [(r["ext_id"], r["stage_ext_id"], r["modified_stage_date_time"])
                    for batch in sims.uis.deals.uploads for r in batch]
            assert len(sent) == len(set(sent)) == 2 * len(first) + 1
            assert {ext for ext, _, _ in sent} == {str(i) for i in [*first, second]}


async def test_uis_refusing_one_deal_makes_one_dead_letter_and_delivers_the_rest(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON)
            book = sims.crm.order_book
            ids = [book.create_order(phone=f"+7999111111{i}") for i in range(3)]
            sims.uis.deals.refuse[str(ids[1])] = "deal_is_locked"
            async with open_daemon(sims, settings) as d:
                await _pass(d)
                await d.settle()
                assert sims.uis.deals.history(str(ids[0]))
                assert sims.uis.deals.history(str(ids[2]))
                assert not sims.uis.deals.history(str(ids[1]))
                dead = d.ctx.store.dead_letters()
                assert len(dead) == 1 and dead[0]["kind"] == "deals_upload"
                assert json.loads(dead[0]["payload"])["orders"][0]["order_id"] == ids[1]
                assert "deal_is_locked" in dead[0]["last_error"]


async def test_orders_without_contact_data_deleted_or_unknown_are_skipped_and_the_cursor_moves(
        tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON)
            book = sims.crm.order_book
            anonymous = book.create_order(phone=None)
            doomed = book.create_order()
            book.set_status(doomed, "assembling")
            book.delete_order(doomed)
            book.set_status(book.create_order(), "status-nobody-knows")
            good = book.create_order()
            async with open_daemon(sims, settings) as d:
                await _pass(d)
                row = d.ctx.store.conn.execute(
                    "SELECT skipped_reason FROM deal_orders WHERE order_id = ?",
                    (anonymous,)).fetchone()
                assert "no phone" in row[0]
                assert not sims.uis.deals.history(str(anonymous))
                assert sims.uis.deals.history(str(good))
                assert d.ctx.store.conn.execute(
                    "SELECT value FROM deal_state WHERE key = 'since_id'").fetchone()[0] == str(
                    book.history[-1]["id"])
                # the status page's part says what happened
                now = time.time()
                html = page._environment(d.ctx, "en").get_template("parts/deals.html").render(
                    deals=pagedata.read_deals(d.ctx.store.conn, now), now=now)
                assert "orders seen" in html and "no phone, no e-mail" in html
                assert ">4</strong>" in html  # anonymous, the unknown status's, good, doomed


def _busiest_second(times: list[float]) -> int:
    """The most requests that fell into any one-second window [t, t + 1)."""
    ordered = sorted(times)
    return max((bisect.bisect_left(ordered, t + 1.0) - i for i, t in enumerate(ordered)),
               default=0)


async def test_backfill_of_2000_orders_stays_inside_both_rate_limits_and_resumes(tmp_path):
    with trio.fail_after(120):
        # retailCRM's simulator answers 503 above 10 requests/s (its documented limit)
        async with open_sims(rate_limit_per_second=10) as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON,
                                    ratelimit={"crm_per_second": 8, "uis_per_second": 20})
            book = sims.crm.order_book
            base = datetime(2026, 11, 2, 9, 0, 0)
            ids = [book.create_order(phone=f"+7999{i:07d}", created_at=(
                base + timedelta(seconds=60 * i)).strftime("%Y-%m-%d %H:%M:%S"))
                for i in range(2000)]
            book.create_order(created_at="2026-12-02 09:00:00")  # outside the period
            err = io.StringIO()
            out = io.StringIO()
            code = await cli_deals.run_backfill(settings, datetime(2026, 11, 1),
                                                datetime(2026, 11, 30, 23, 59, 59),
                                                deliver=True, progress=True, out=out, err=err)
            assert code == 0, out.getvalue()
            assert "2000 history entries read" in out.getvalue()
            assert "deals backfill:" in err.getvalue()  # the progress line
            assert set(sims.uis.deals.deals) == {str(i) for i in ids}
            assert [r.status for r in sims.crm.requests if r.status != 200] == []
            assert _busiest_second(sims.uis.rpc_times) <= 22
            uploads = len(sims.uis.deals.uploads)
            assert uploads == 2000 // 50
            # a second run of the same period reads one page and sends nothing
            reads = len([r for r in sims.crm.requests if r.endpoint == "orders/history"])
            code = await cli_deals.run_backfill(settings, datetime(2026, 11, 1),
                                                datetime(2026, 11, 30, 23, 59, 59),
                                                deliver=True, out=out, err=err)
            assert code == 0
            assert len([r for r in sims.crm.requests if r.endpoint == "orders/history"]) == \
                reads + 1
            assert len(sims.uis.deals.uploads) == uploads


async def test_check_says_whether_the_uis_key_may_load_deals(tmp_path):
    with trio.fail_after(20):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON)
            lines: list[str] = []
            await check.check(settings, lines.append)
            deal_rows = [line for line in "\n".join(lines).splitlines()
                         if line.startswith("deals")]
            assert len(deal_rows) == 2 and all(" ok " in line for line in deal_rows)
            sims.uis.fail_next("get.sales_funnel", "method_component_disabled", -32003)
            lines.clear()
            assert await check.check(settings, lines.append) == 1
            refused = [line for line in lines[0].splitlines() if line.startswith("deals")]
            assert "FAIL" in refused[0] and "method_component_disabled" in refused[0]
            # deals off: nothing about them is checked
            lines.clear()
            off = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            await check.check(off, lines.append)
            assert not [line for line in lines[0].splitlines() if line.startswith("deals")]


async def test_history_that_goes_back_behind_the_cursor_is_logged_and_sends_nothing_twice(
        tmp_path, caplog):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON)
            book = sims.crm.order_book
            first = book.create_order()
            async with open_daemon(sims, settings) as d:
                await _pass(d)
                second = book.create_order()
                book.rewind_next = True
                await _pass(d)
                assert "did sinceId go backwards?" in caplog.text
                sent = [r["ext_id"] for batch in sims.uis.deals.uploads for r in batch]
                assert sorted(sent) == sorted([str(first), str(second)])


async def test_outages_and_spent_budgets_make_the_loop_wait_and_resume(tmp_path, caplog):
    with trio.fail_after(40):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, deals=ON)
            book = sims.crm.order_book
            order_id = book.create_order()
            sims.crm.fault = "503"  # retailCRM down for the first pass
            async with open_daemon(sims, settings) as d:
                with trio.fail_after(15):
                    await d.deals.wait_next_pass()
                summary = pagedata.read_deals(d.ctx.store.conn, time.time())
                assert "503" in summary["last_error"]
                assert not sims.uis.deals.uploads
                sims.crm.fault = None
                # UIS's minute budget: 7 requests a "minute" of 2 s; reconcile.minute_reserve
                # (5) is kept for live call work, so the deals wait for the next minute.
                sims.uis.minute_limit, sims.uis.minute_seconds = 7, 2.0
                await _pass(d)
                await sims.uis.wait_for(lambda: sims.uis.deals.history(str(order_id)), 20)
                assert "the reserve for live call work is 5" in caplog.text
                assert pagedata.read_deals(d.ctx.store.conn, time.time())["last_error"] is None


async def test_simulators_refuse_what_the_vendors_refuse(tmp_path):
    with trio.fail_after(20):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            base = f"{sims.crm_url}/api/v5/"
            key = {"X-API-KEY": CRM_KEY}
            bad_limit = await http.get(base + "orders/history", params={"limit": 7}, headers=key)
            assert bad_limit.status_code == 400 and "limit" in bad_limit.json()["errors"]
            bad_since = await http.get(base + "orders/history",
                                       params={"filter[sinceId]": "x", "limit": 20}, headers=key)
            assert bad_since.status_code == 400
            assert (await http.get(base + "orders/history", headers={"X-API-KEY": "no"})
                    ).status_code == 403
            page = await http.get(base + "orders/history", params={"limit": 20}, headers=key)
            assert page.json()["pagination"]["totalCount"] == 0

            async def rpc(method: str, **params: object) -> dict:
                body = {"jsonrpc": "2.0", "id": 1, "method": method,
                        "params": {"access_token": UIS_TOKEN, **params}}
                return (await http.post(f"{sims.uis_url}/dataapi/v2.0", json=body)).json()

            row = {"ext_id": "1", "name": "Order 1", "created_date_time": "2026-01-01 10:00:00",
                   "sales_funnel_ext_id": "f", "stage_ext_id": "s", "communication_id": 5,
                   "communication_type": "call"}
            missing = await rpc("upload.deals_history", deals=[row])
            assert missing["error"]["data"]["mnemonic"] == "entity_not_found"
            assert missing["error"]["data"]["field"] == "deals.0.sales_funnel_ext_id"
            funnel = await rpc("create.sales_funnel", ext_id="f", name="F", stages={
                "success": {"ext_id": "won", "name": "Won"},
                "failed": {"ext_id": "lost", "name": "Lost"},
                "in_process": [{"ext_id": "s", "name": "S", "order": 10}]})
            assert "result" in funnel
            unknown = await rpc("upload.deals_history", deals=[{**row, "colour": "red"}])
            assert unknown["error"]["data"]["mnemonic"] == "parameter_is_not_allowed"
            assert "result" in await rpc("upload.deals_history", deals=[row])
            assert sims.uis.deals.history("1")[0]["stage_ext_id"] == "s"


def test_deals_backfill_is_a_subcommand():
    from tracker.cli import main

    args = main.build_parser().parse_args(
        ["deals", "backfill", "--from", "2024-05-01", "--till", "2024-05-31", "--no-deliver"])
    assert args.func is main._deals and args.no_deliver
    assert main.main(["deals", "backfill", "--from", "2024-05-31", "--till", "2024-05-01"]) == 2

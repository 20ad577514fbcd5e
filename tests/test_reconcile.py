"""Reconciliation and backfill: sessions tracker never heard of are created and uploaded once."""

from __future__ import annotations

import io
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
import trio

from tests.support import ANNA, BORIS, VERA, open_daemon, open_sims, open_system, settings_for
from tracker.cli import backfill
from tracker.cli import main as cli
from tracker.clients.uis import UisClient
from tracker.core import synthesis, windows
from tracker.core.calls import Call
from tracker.core.catalogue import EVENTS
from tracker.core.statecharts import DEFAULT_DIR, load_all
from tracker.db.store import open_store
from tracker.errors import DeliveryError
from tracker.features import reconcile
from tracker.features.reconcile import Reconciler, Tally
from tracker.simulators import scenarios
from tracker.simulators.jsonrpc import _months_later

BASE = {
    "sweeper": {"enabled": False},
    "reconcile": {"enabled": False, "page_size": 2, "grace_seconds": 0, "retry_seconds": 0.05},
    "ratelimit": {"uis_per_second": 500},
}


def _sections(**changes: dict) -> dict:
    return {name: {**BASE.get(name, {}), **changes.get(name, {})} for name in {*BASE, *changes}}


# Every kind of call, each built twice: once played live, once only in the Data API report.
KINDS = {
    "answered": lambda sid, at: scenarios.answered(sid, start=at, employee=ANNA, wait_seconds=7,
                                                   talk_seconds=95),
    "ring_group_answered": lambda sid, at: scenarios.ring_group_answered(
        sid, start=at, ringing=[ANNA, VERA], employee=BORIS, talk_seconds=40),
    "ring_group_lost": lambda sid, at: scenarios.ring_group_lost(
        sid, start=at, ringing=[ANNA, BORIS, VERA], wait_seconds=31),
    "lost_in_ivr": lambda sid, at: scenarios.lost_in_ivr(sid, start=at, wait_seconds=12),
    "transfer": lambda sid, at: scenarios.transfer(sid, start=at, first=ANNA, second=BORIS),
    "outbound_answered": lambda sid, at: scenarios.outbound(sid, start=at, employee=BORIS,
                                                            external_id="crm-7"),
    "outbound_not_answered": lambda sid, at: scenarios.outbound(sid, start=at, employee=VERA,
                                                                answered=False),
}
# Spread over two Data API windows (at most three months each).
STARTS = [datetime(2024, 1, 10, 14, 3, 27), datetime(2024, 2, 14, 9, 0, 0),
          datetime(2024, 3, 20, 18, 30, 5), datetime(2024, 4, 2, 8, 15, 0),
          datetime(2024, 5, 17, 14, 3, 27), datetime(2024, 6, 5, 11, 11, 11),
          datetime(2024, 6, 28, 23, 0, 0)]
LIVE, MISSED = 5_000_000_000, 6_000_000_000
PERIOD = (datetime(2024, 1, 1), datetime(2024, 6, 30, 23, 59, 59))
DAY = (datetime(2024, 5, 17), datetime(2024, 5, 17, 23, 59, 59))  # one window


def _same_upload(item: dict, session_id: int) -> dict:
    """An upload with the session's own ids taken out, to compare two sessions of one kind."""
    out = dict(item)
    assert out.pop("externalId") == str(session_id)
    if "recordUrl" in out:
        prefix = f"https://media.test/talk/{session_id}/"
        assert out["recordUrl"].startswith(prefix)
        out["recordUrl"] = str(int(out["recordUrl"][len(prefix):].strip("/")) - session_id * 100)
    return out


def _reports(uis, since: int = 0) -> list[dict]:
    """The params of ``get.calls_report`` requests from the ``since``-th request on."""
    return [r["params"] for r in uis.rpc_requests[since:]
            if r.get("method") == "get.calls_report"]


def _counts(store) -> tuple[int, ...]:
    return tuple(store.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                 for t in ("calls", "events", "outbox"))


async def test_backfill_uploads_missed_sessions_like_live_ones_and_a_rerun_changes_nothing(
        tmp_path):
    with trio.fail_after(40):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **_sections())
            async with open_daemon(sims, settings) as d:
                for k, build in enumerate(KINDS.values()):
                    await d.play(build(LIVE + k, STARTS[k]))
                await d.settle()
            for k, build in enumerate(KINDS.values()):
                sims.uis.register(build(MISSED + k, STARTS[k]))
            before, asked_before = len(sims.crm.requests), len(sims.uis.rpc_requests)
            out, err = io.StringIO(), io.StringIO()
            code = await backfill.run_backfill(settings, *PERIOD, progress=True, out=out,
                                                err=err)
            assert code == 0, out.getvalue()
            crm = sims.crm
            for k, kind in enumerate(KINDS):
                [live] = crm.calls_for(str(LIVE + k))
                [missed] = crm.calls_for(str(MISSED + k))
                assert _same_upload(missed, MISSED + k) == _same_upload(live, LIVE + k), kind
                assert crm.events_for(str(MISSED + k)) == [], kind  # no card for a call long over
            assert {r.endpoint for r in crm.requests[before:]} == {"telephony/calls/upload"}
            # two windows of at most three months, paged by two with a stable order
            reports = _reports(sims.uis, asked_before)
            asked = [(p["date_from"], p["date_till"], p["offset"]) for p in reports]
            # keyset pages on start_time: each from the last start second read; a second that
            # fills a page is read on its own (get.calls_report cannot be sorted by id)
            ends = ("2024-03-31 23:59:59", "2024-06-30 23:59:59")
            assert asked == [
                ("2024-01-01 00:00:00", ends[0], 0),
                ("2024-01-10 14:03:27", "2024-01-10 14:03:27", 0),
                ("2024-01-10 14:03:28", ends[0], 0),
                ("2024-02-14 09:00:00", "2024-02-14 09:00:00", 0),
                ("2024-02-14 09:00:01", ends[0], 0),
                ("2024-04-01 00:00:00", ends[1], 0),
                ("2024-04-02 08:15:00", "2024-04-02 08:15:00", 0),
                ("2024-04-02 08:15:01", ends[1], 0),
                ("2024-05-17 14:03:27", "2024-05-17 14:03:27", 0),
                ("2024-05-17 14:03:28", ends[1], 0),
                ("2024-06-05 11:11:11", "2024-06-05 11:11:11", 0),
                ("2024-06-05 11:11:12", ends[1], 0),
            ]
            assert all(p["limit"] == 2 and p["fields"] == synthesis.REPORT_FIELDS
                       and p["sort"] == [{"field": "start_time", "order": "asc"}]
                       for p in reports)
            summary = out.getvalue()
            assert ("UIS reported 14 finished sessions; 7 already known, 7 created "
                    "(4 answered, 3 lost)") in summary
            assert "7 delivered" in summary
            assert "\rbackfill 2024-04-01 00:00:00 … 2024-06-30 23:59:59: read 14/14" in \
                err.getvalue()
            store = open_store(settings)
            try:
                row = store.call_row(MISSED)
                assert row["end_reason"] == reconcile.REASON and row["state"] == "ended"
                methods = {e["method"] for e in store.events_for(MISSED)}
                assert methods == {"BACKFILL"}
                [warning] = [w for w in store.warnings() if w["kind"] == "reconcile"]
                assert warning["count"] == 7  # one per missed session, on the status page
                counts = _counts(store)
            finally:
                store.close()

            requests = len(crm.requests)
            again = io.StringIO()
            assert await backfill.run_backfill(settings, *PERIOD, out=again) == 0
            assert "14 already known, 0 created" in again.getvalue()
            assert len(crm.requests) == requests
            store = open_store(settings)
            try:
                assert _counts(store) == counts
            finally:
                store.close()


async def test_late_notifications_of_a_backfilled_call_open_no_card_and_upload_nothing(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **_sections())
            scenario = KINDS["ring_group_answered"](MISSED, STARTS[4])
            sims.uis.register(scenario)
            assert await backfill.run_backfill(settings, *PERIOD, deliver=False,
                                                out=io.StringIO()) == 0
            async with open_daemon(sims, settings) as d:
                await d.sims.crm.wait_for(lambda: d.uploads_for(MISSED))  # pending rows resume
                for notification in scenario.notifications:
                    response = await sims.uis.send_notification(notification, d.webhook, d.client)
                    assert response.json()["status"] == "accepted"
                await d.settle()
                assert d.events_for(MISSED) == []
                assert len(d.uploads_for(MISSED)) == 1
                assert d.ctx.store.call_row(MISSED)["state"] == "ended"


def _reconciler(settings, store, http, **kwargs) -> tuple[Reconciler, UisClient]:
    chart = load_all(DEFAULT_DIR, Call, EVENTS)["call"]
    uis = UisClient(http, settings.uis)  # no rate gate: the reconciler's own pacing is tested
    reconciler = Reconciler(store, chart, ZoneInfo(settings.crm.timezone), uis,
                            settings.reconcile, **kwargs)
    return reconciler, uis


async def _register_lost(uis, count: int, start: datetime) -> list[int]:
    ids = [MISSED + k for k in range(count)]
    for k, sid in enumerate(ids):
        uis.register(scenarios.lost_in_ivr(sid, start=start + timedelta(minutes=k)))
    return ids


async def test_paging_leaves_the_minute_reserve_and_never_gets_refused(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            sims.uis.minute_limit, sims.uis.minute_seconds = 3, 1.0
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **_sections(
                reconcile={"page_size": 1, "minute_reserve": 1}))
            ids = await _register_lost(sims.uis, 5, datetime(2024, 5, 17, 10, 0, 0))
            store = open_store(settings)
            seen: list[int] = []
            try:
                reconciler, uis = _reconciler(
                    settings, store, http,
                    on_progress=lambda t: seen.append(uis.last_limits["minute_remaining"]))
                tally = await reconciler.reconcile(*DAY)
                assert sorted(tally.created_ids) == ids
            finally:
                store.close()
            reports = _reports(sims.uis)
            assert len(reports) == 9 and {p["offset"] for p in reports} == {0}  # none refused
            assert min(seen) >= 1  # the reserve stayed for live work


@pytest.mark.parametrize(("mnemonic", "code", "faults", "succeeds"), [
    ("limit_exceeded", -32029, 2, True),
    ("internal_error", -32603, 3, True),
    ("limit_exceeded", -32029, 4, False),  # max_retries 3: the fourth failure gives up
    ("access_token_invalid", -32001, 1, False),  # permanent: no retry at all
])
async def test_failures_are_retried_with_backoff_up_to_max_retries(tmp_path, mnemonic, code,
                                                                   faults, succeeds):
    with trio.fail_after(30):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **_sections(
                reconcile={"max_retries": 3, "page_size": 10}))
            ids = await _register_lost(sims.uis, 3, datetime(2024, 5, 17, 10, 0, 0))
            sims.uis.fail_next("get.calls_report", mnemonic, code, count=faults)
            store = open_store(settings)
            try:
                reconciler, _ = _reconciler(settings, store, http)
                started = trio.current_time()
                if succeeds:
                    tally = await reconciler.reconcile(*DAY)
                    assert sorted(tally.created_ids) == ids
                    assert len(_reports(sims.uis)) == faults + 1
                    # pauses double: 0.05 + 0.1 (+ 0.2)
                    assert trio.current_time() - started >= 0.05 * (2 ** faults - 1)
                else:
                    with pytest.raises(DeliveryError, match=mnemonic):
                        await reconciler.reconcile(*DAY)
                    assert len(_reports(sims.uis)) == faults
                    assert store.conn.execute("SELECT count(*) FROM calls").fetchone()[0] == 0
                assert reconciler.statistics().failed_requests == min(faults, 4) - (
                    1 if mnemonic == "access_token_invalid" else 0)
            finally:
                store.close()


async def test_paging_never_needs_an_offset(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **_sections(
                reconcile={"page_size": 1}))
            ids = await _register_lost(sims.uis, 6, datetime(2024, 5, 17, 10, 0, 0))
            store = open_store(settings)
            try:
                reconciler, _ = _reconciler(settings, store, http)
                tally = await reconciler.reconcile(datetime(2024, 5, 17, 10, 0, 0),
                                                   datetime(2024, 5, 17, 10, 5, 59))
            finally:
                store.close()
            assert sorted(tally.created_ids) == ids
            assert tally.reported == 6 and tally.created == 6
            assert max(p["offset"] for p in _reports(sims.uis)) == 0


async def test_thousands_of_sessions_sharing_a_few_start_seconds_are_each_read_once(tmp_path):
    """2,500 sessions in five start seconds, pages of 100: UIS gives no order among sessions
    of one second (the simulator shuffles them per request), so offset paging would miss and
    repeat some; keyset pages with id-range splits of crowded seconds read each exactly once."""
    seconds = {datetime(2024, 5, 17, 10, 0, 0): 700, datetime(2024, 5, 17, 10, 0, 1): 30,
               datetime(2024, 5, 17, 10, 0, 5): 1000, datetime(2024, 5, 17, 10, 0, 6): 70,
               datetime(2024, 5, 17, 10, 0, 9): 700}
    with trio.fail_after(120):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **_sections(
                reconcile={"page_size": 100}))
            ids = []
            for at, count in seconds.items():
                for _ in range(count):
                    sid = MISSED + len(ids) * 7  # not contiguous: ranges split on real ids
                    sims.uis.register(scenarios.lost_in_ivr(sid, start=at, wait_seconds=5))
                    ids.append(sid)
            store = open_store(settings)
            try:
                reconciler, _ = _reconciler(settings, store, http)
                tally = await reconciler.reconcile(*DAY)
                again = await reconciler.reconcile(*DAY)
            finally:
                store.close()
            assert tally.created_ids == list(dict.fromkeys(tally.created_ids))  # none twice
            assert sorted(tally.created_ids) == ids
            assert (tally.reported, tally.read, tally.created) == (2500, 2500, 2500)
            assert (again.created, again.known, again.read) == (0, 2500, 2500)
            reports = _reports(sims.uis)
            assert all(p["limit"] == 100 and p["offset"] == 0 for p in reports)
            assert all(p["sort"] == [{"field": "start_time", "order": "asc"}] for p in reports)


async def test_backfill_stops_when_the_day_budget_runs_low_and_a_rerun_continues(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            # pages of one: each session costs its page and the read of its start second
            sims.uis.day_limit = 6
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **_sections(
                reconcile={"page_size": 1, "day_reserve": 2}))
            ids = await _register_lost(sims.uis, 4, datetime(2024, 5, 17, 10, 0, 0))
            out = io.StringIO()
            assert await backfill.run_backfill(settings, *DAY, deliver=False, out=out) == 1
            assert "2 created" in out.getvalue()
            assert "day budget is down to 2" in out.getvalue()
            assert len(_reports(sims.uis)) == 4
            sims.uis.day_limit = 100  # a new day
            out = io.StringIO()
            assert await backfill.run_backfill(settings, *DAY, deliver=False, out=out) == 0
            assert "2 already known, 2 created" in out.getvalue()
            store = open_store(settings)
            try:
                assert [r[0] for r in store.conn.execute(
                    "SELECT id FROM calls ORDER BY id")] == ids
            finally:
                store.close()


async def test_daemon_reconciles_the_last_hours_and_leaves_recent_sessions_alone(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path, **_sections(reconcile={
                "enabled": True, "start_delay_seconds": 0, "interval_seconds": 0.2,
                "lookback_hours": 1, "grace_seconds": 60, "page_size": 10})) as d:
            now = d.sims.uis.now()
            missed = [scenarios.ring_group_lost(MISSED, start=now - timedelta(minutes=20),
                                                ringing=[ANNA, BORIS]),
                      scenarios.answered(MISSED + 1, start=now - timedelta(minutes=10),
                                         employee=VERA)]
            too_old = scenarios.lost_in_ivr(MISSED + 2, start=now - timedelta(hours=2))
            recent = scenarios.lost_in_ivr(MISSED + 3, start=now - timedelta(seconds=20),
                                           wait_seconds=5)
            for scenario in (*missed, too_old, recent):
                d.sims.uis.register(scenario)
            live = scenarios.answered(LIVE, start=now - timedelta(minutes=5), employee=ANNA)
            await d.play(live)
            await d.sims.crm.wait_for(
                lambda: all(d.uploads_for(s.session_id) for s in missed), timeout=10)
            passes = len(_reports(d.sims.uis))
            await d.sims.uis.wait_for(lambda: len(_reports(d.sims.uis)) >= passes + 2)
            await d.settle()
            for scenario in (*missed, live):
                assert len(d.uploads_for(scenario.session_id)) == 1
                assert d.events_for(scenario.session_id) == [] or scenario is live
            assert d.uploads_for(MISSED)[0]["code"] == "102"
            assert d.uploads_for(MISSED + 1)[0]["result"] == "answered"
            assert d.ctx.store.call_row(MISSED + 2) is None  # outside the lookback
            assert d.ctx.store.call_row(MISSED + 3) is None  # its notifications may still come
            p = _reports(d.sims.uis)[-1]
            span = datetime.fromisoformat(p["date_till"]) - datetime.fromisoformat(p["date_from"])
            assert span == timedelta(hours=1)


# -- pure parts ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("start", "end", "count"), [
    ("2024-01-01 00:00:00", "2024-01-01 00:00:00", 1),
    ("2024-01-01 00:00:00", "2024-03-31 23:59:59", 1),
    ("2024-01-01 00:00:00", "2024-04-01 00:00:00", 2),
    ("2023-11-30 12:00:00", "2024-12-31 23:59:59", 5),
    ("2024-01-31 00:00:00", "2025-02-28 00:00:00", 5),
])
def test_windows_cover_the_period_and_none_exceeds_three_months(start, end, count):
    date_from, date_till = datetime.fromisoformat(start), datetime.fromisoformat(end)
    result = windows.windows(date_from, date_till)
    assert len(result) == count
    assert result[0][0] == date_from and result[-1][1] == date_till
    for (_, b), (c, _) in zip(result, result[1:], strict=False):
        assert c - b == timedelta(seconds=1)  # contiguous: no second lost or read twice
    for a, b in result:
        assert a <= b <= _months_later(a, 3)  # what the Data API (and its simulator) accepts


ROW = {"id": 7, "start_time": "2024-05-17 14:03:27", "finish_time": "2024-05-17 14:05:09",
       "direction": "in", "is_lost": True, "contact_phone_number": "79991234567",
       "virtual_phone_number": "74950000000", "wait_duration": 31, "talk_duration": 0,
       "total_duration": 31, "employees": [{"employee_id": 101}, {"employee_id": 102}],
       "last_talked_employee_id": None, "call_api_external_id": None}


@pytest.mark.parametrize(("row", "state", "expected"), [
    (ROW, "ringing", {"event": "lost_call", "employee_ids": [101, 102], "wait_time_duration": 31,
                      "total_time_duration": 31}),
    (ROW, "talking", {"event": "call_finished", "talk_time_duration": 0}),  # it did talk
    ({**ROW, "is_lost": False, "talk_duration": 60, "last_talked_employee_id": 102}, "ringing",
     {"event": "call_finished", "talk_time_duration": 60, "last_talked_employee_id": 102,
      "employee_id": 102, "wait_time_duration": 31}),
    ({**ROW, "is_lost": None, "talk_duration": 0}, "waiting_answer", {"event": "lost_call"}),
])
def test_ending_is_what_uis_would_have_sent(row, state, expected):
    fields = synthesis.ending(row, state=state, source="test")
    assert {k: fields.get(k) for k in expected} == expected
    assert fields["notification_time"] == row["finish_time"]
    assert fields["call_session_id"] == 7 and fields["tracker_source"] == "test"
    assert synthesis.ending(dict(row), state=state, source="test") == fields  # deterministic


def test_opening_of_an_outbound_session_names_its_employee():
    fields = synthesis.opening({**ROW, "direction": "out"}, source="test")
    assert fields["event"] == "outgoing_call" and fields["employee_id"] == 101
    assert fields["notification_time"] == ROW["start_time"]
    assert synthesis.opening(ROW, source="test")["event"] == "incoming_call"


@pytest.mark.parametrize(("argv", "message"), [
    (["--from", "yesterday", "--till", "2024-01-02"], "not a time"),
    (["--from", "2024-01-02", "--till", "2024-01-01 10:00:00"], "before --from"),
])
def test_backfill_command_refuses_bad_times(tmp_path, capsys, argv, message):
    assert cli.main(["backfill", *argv, "--config", str(tmp_path / "none.toml")]) == 2
    assert message in capsys.readouterr().err


def test_parse_moment_reads_bare_dates_as_whole_days():
    assert windows.parse_moment("2024-05-17") == datetime(2024, 5, 17)
    assert windows.parse_moment("2024-05-17", end_of_day=True) == datetime(2024, 5, 17, 23, 59,
                                                                              59)
    assert windows.parse_moment(" 2024-05-17 14:03:27 ") == datetime(2024, 5, 17, 14, 3, 27)


def test_progress_line_is_silent_unless_enabled():
    quiet, loud = io.StringIO(), io.StringIO()
    for stream, enabled in ((quiet, False), (loud, True)):
        bar = backfill.Progress(stream, enabled, min_interval=0)
        bar.show(backfill._reading_line(Tally(read=3, reported=10, created=1, known=2,
                                               window="w")))
        bar.show("short")
        bar.close()
    assert quiet.getvalue() == ""
    assert loud.getvalue().startswith("\rbackfill w: read 3/10, 1 new, 2 known\rshort ")
    assert loud.getvalue().endswith("\n")

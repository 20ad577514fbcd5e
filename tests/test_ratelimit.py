"""Rate limits: the sans-I/O limiter (explicit times), the trio gate (autojump clock), and the
daemon against a retailCRM simulator that answers 503 above its rate."""

from __future__ import annotations

import pytest
import trio

from tests.support import ANNA, open_daemon, open_sims, settings_for, start_time
from tracker.clients.throttle import Gate, priority_var
from tracker.core.ratelimit import Limiter, Rule, limit_exceeded_wait
from tracker.errors import RetryableDelivery
from tracker.simulators import scenarios


def crm_limiter(**kwargs) -> Limiter:
    return Limiter("retailCRM", [Rule("telephony/", 40.0)], default_per_second=10.0, **kwargs)


def sent_times(limiter: Limiter, route: str, count: int, start: float = 0.0) -> list[float]:
    """When ``count`` back-to-back requests on ``route`` may go, each as soon as allowed."""
    now, times = start, []
    for _ in range(count):
        now += limiter.delay(route, now)
        limiter.take(route, now)
        times.append(round(now, 6))
    return times


@pytest.mark.parametrize(("route", "per_second"), [
    ("telephony/call/event", 40.0),
    ("telephony/calls/upload", 40.0),
    ("/telephony/manager", 40.0),
    ("users/27/status", 10.0),
    ("integration-modules/uis-tracker/edit", 10.0),
])
def test_each_route_draws_from_its_bucket_at_its_rate(route, per_second):
    times = sent_times(crm_limiter(), route, 81)
    assert times[0] == 0.0
    gaps = {round(b - a, 6) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {round(1 / per_second, 6)}


def test_no_sliding_second_holds_more_requests_than_the_rate():
    times = sent_times(crm_limiter(), "telephony/call/event", 200)
    for i, t in enumerate(times):
        in_window = [u for u in times[i:] if u < t + 1.0]
        assert len(in_window) <= 40


def test_telephony_and_general_buckets_do_not_starve_each_other():
    limiter = crm_limiter()
    sent_times(limiter, "telephony/calls/upload", 40)  # the telephony bucket is busy for 1 s
    assert limiter.delay("users/1/status", 0.0) == 0.0


def test_throttling_halves_the_rate_pauses_and_recovers_linearly():
    limiter = crm_limiter(recovery_seconds=10.0)
    limiter.throttled(100.0, retry_after_seconds=2.0)
    assert limiter.delay("telephony/call/event", 100.0) == pytest.approx(2.0)
    assert limiter.delay("telephony/call/event", 101.5) == pytest.approx(0.5)
    assert limiter.slowdown(100.0) == pytest.approx(0.5)
    assert limiter.slowdown(105.0) == pytest.approx(0.75)
    assert limiter.slowdown(110.0) == 1.0
    stats = limiter.statistics(100.0)
    assert stats.rates == {"telephony/": 20.0, "": 5.0}
    assert stats.paused_for_seconds == 2.0 and stats.throttled_total == 1


def test_repeated_throttling_slows_down_to_the_floor_and_no_further():
    limiter = crm_limiter(floor=0.1, recovery_seconds=1000.0)
    for _ in range(10):
        limiter.throttled(0.0)
    assert limiter.slowdown(0.0) == pytest.approx(0.1)
    assert limiter.delay("users/1/status", 1.0) == 0.0  # the pause without Retry-After: 1 s
    limiter.take("users/1/status", 1.0)
    assert limiter.delay("users/1/status", 1.0) == pytest.approx(1.0, rel=0.01)  # 10/s * ~0.1


def test_throttled_rate_spaces_requests_further_apart():
    limiter = crm_limiter(recovery_seconds=1000.0)
    limiter.throttled(0.0, retry_after_seconds=0.0)
    times = sent_times(limiter, "telephony/call/event", 5)
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:], strict=False)]
    assert all(g >= 0.049 for g in gaps), gaps  # 20/s instead of 40/s


@pytest.mark.parametrize(("limits", "paused_for"), [
    ({"minute_remaining": 0, "minute_reset": 17, "day_remaining": 500, "day_reset": 3000}, 17.0),
    ({"minute_remaining": 5, "minute_reset": 17, "day_remaining": 0, "day_reset": 3000}, 3000.0),
    ({"minute_remaining": 0, "minute_reset": None}, 60.0),
    ({"minute_remaining": 3, "minute_reset": 17, "day_remaining": 10, "day_reset": 99}, 0.0),
    ({"minute_remaining": "0", "minute_reset": 5}, 0.0),  # not numbers: ignored
])
def test_uis_budgets_pause_requests_until_they_reset(limits, paused_for):
    limiter = Limiter("UIS", [], default_per_second=5.0)
    limiter.observe_budget(limits, 50.0)
    assert limiter.delay("get.calls_report", 50.0) == pytest.approx(paused_for)
    assert limiter.statistics(50.0).budget == limits


@pytest.mark.parametrize(("limits", "wait"), [
    ({}, 60.0),
    ({"minute_reset": 12, "day_remaining": 900, "day_reset": 4000}, 12.0),
    ({"minute_reset": 12, "day_remaining": 1, "day_reset": 4000}, 4000.0),
    ({"minute_reset": 0}, 60.0),
])
def test_limit_exceeded_waits_for_the_budget_that_ran_out(limits, wait):
    assert limit_exceeded_wait(limits) == wait


def test_bad_rates_are_refused():
    with pytest.raises(ValueError):
        Limiter("x", [], default_per_second=0)


# -- the gate ----------------------------------------------------------------------------------


async def test_gate_lets_the_most_urgent_waiter_go_first(autojump_clock):
    gate = Gate(Limiter("retailCRM", [], default_per_second=1.0))
    order: list[str] = []

    async def request(name: str, priority: int) -> None:
        priority_var.set(priority)
        await gate.wait_turn("telephony/calls/upload")
        order.append(name)

    with trio.fail_after(60):
        await gate.wait_turn("x")  # spend the only token: everyone below has to queue
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(request, f"upload{i}", 1)
                await trio.sleep(0.01)
            nursery.start_soon(request, "popup", 0)
    assert order == ["popup", "upload0", "upload1", "upload2"]


async def test_gate_spaces_requests_at_the_rate_and_obeys_retry_after(autojump_clock):
    gate = Gate(Limiter("retailCRM", [], default_per_second=4.0))
    times: list[float] = []
    with trio.fail_after(60):
        start = trio.current_time()
        for _ in range(3):
            await gate.wait_turn("orders")
            times.append(trio.current_time() - start)
        gate.note_answer(throttled=True, retry_after_seconds=5.0)
        await gate.wait_turn("orders")
        times.append(trio.current_time() - start)
    assert times[:3] == pytest.approx([0.0, 0.25, 0.5])
    assert times[3] == pytest.approx(0.5 + 5.0, abs=0.01)
    assert gate.statistics().throttled_total == 1


async def test_a_wait_longer_than_the_bound_is_not_held_but_retried_later(autojump_clock):
    gate = Gate(Limiter("UIS", [], default_per_second=5.0), max_wait_seconds=5.0)
    gate.note_answer(throttled=False, limits={"minute_remaining": 0, "minute_reset": 42})
    with trio.fail_after(60):
        started = trio.current_time()
        with pytest.raises(RetryableDelivery) as caught:
            await gate.wait_turn("get.call_legs_report")
        assert trio.current_time() == started  # a worker is not held for 42 s
    assert caught.value.retry_after_seconds == pytest.approx(42.0)
    assert gate.waiting() == 0


async def test_a_cancelled_waiter_leaves_the_queue(autojump_clock):
    gate = Gate(Limiter("retailCRM", [], default_per_second=1.0))
    with trio.fail_after(60):
        await gate.wait_turn("a")
        with trio.move_on_after(0.1):
            await gate.wait_turn("a")
        assert gate.waiting() == 0
        await gate.wait_turn("a")  # the next one is not stuck behind the cancelled ticket


# -- against the daemon ------------------------------------------------------------------------


async def test_daemon_stays_under_the_crm_rate_and_loses_nothing(tmp_path):
    """A simulator that answers 503 above 8 requests/s; the daemon is told 6/s on telephony."""
    sessions = [900_000 + i for i in range(12)]
    with trio.fail_after(40):
        async with open_sims(rate_limit_per_second=8) as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url,
                                    ratelimit={"crm_telephony_per_second": 6},
                                    outbox={"workers": 4})
            async with open_daemon(sims, settings) as d:
                async with trio.open_nursery() as nursery:
                    for session in sessions:
                        nursery.start_soon(lambda s=session: d.play(
                            scenarios.ring_group_lost(s, start=start_time(), ringing=[ANNA]),
                            settle=False))
                await sims.crm.wait_for(lambda: all(d.uploads_for(s) for s in sessions), 30)
                await d.settle()
            statuses = [r.status for r in sims.crm.requests]
            assert 503 not in statuses
            assert sorted(str(s) for s in sessions) == sorted(sims.crm.uploaded)
            stats = d.ctx.crm.gate.statistics()
            assert stats.throttled_total == 0


async def test_daemon_slows_down_on_503_and_recovers(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            async with open_daemon(sims, settings) as d:
                sims.crm.fail_next("503", count=2)
                await d.play(scenarios.lost_in_ivr(SESSION, start=start_time()), settle=False)
                await sims.crm.wait_for(lambda: d.uploads_for(SESSION), 20)
                stats = d.ctx.crm.gate.statistics()
                assert stats.throttled_total == 2
                assert stats.slowdown < 1.0
                health = (await d.client.get(f"{d.url}/healthz")).json()
                assert health["rate_limits"]["retailCRM"]["throttled_total"] == 2


SESSION = 998_100_001


async def test_a_spent_uis_minute_budget_is_not_overdrawn(tmp_path):
    """UIS allows two calls this minute: the third recording lookup is never sent (UIS never has
    to answer limit_exceeded), and that call is uploaded anyway (with the link its call_recorded
    notification gave) instead of holding a worker until the minute ends."""
    sessions = [SESSION + i for i in range(3)]
    with trio.fail_after(30):
        async with open_sims() as sims:
            sims.uis.minute_limit = 2
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url,
                                    uis={"record_wait_seconds": 1})
            async with open_daemon(sims, settings) as d:
                for session in sessions:
                    await d.play(scenarios.answered(session, start=start_time(), employee=ANNA),
                                 settle=False)
                await sims.crm.wait_for(lambda: all(d.uploads_for(s) for s in sessions), 20)
                health = (await d.client.get(f"{d.url}/healthz")).json()
            lookups = [r for r in sims.uis.rpc_requests
                       if r.get("method") == "get.call_legs_report"]
            assert len(lookups) == 2
            assert health["rate_limits"]["UIS"]["paused_for_seconds"] > 30

"""Calls of every kind for the status page's tests (HTTP and browser): what each page shows."""

from __future__ import annotations

from datetime import datetime, timedelta

from tests.support import ANNA, BORIS, CRM_KEY, Daemon
from tracker.simulators import scenarios

ANSWERED, LOST, ONGOING, GUEST, DEAD = 998677501, 998677502, 998677503, 998677504, 998677505
CUSTOMER = "79020790876"  # a caller retailCRM knows: Ольга Соколова, customer 77


async def populate(d: Daemon, media_url: str = scenarios.DEFAULT_MEDIA_URL) -> None:
    """A routed caller known to retailCRM who was missed and then answered (a call-back),
    a call talking now, an unmapped employee's call, a dead letter; and calls a week ago.
    Today's calls start minutes ago (just after midnight they may fall on yesterday: the tests
    check the pictures are there, not their counts)."""
    now: datetime = d.sims.uis.now()

    def start_time(minutes_ago: float = 0) -> datetime:
        return now - timedelta(minutes=minutes_ago)

    for k in range(6):  # the same weekday last week, for the picture of the hours
        await d.play(scenarios.answered(998600000 + k, start=now - timedelta(days=7, hours=k),
                                        employee=BORIS, contact=f"7916000000{k}"), settle=False)
    d.sims.crm.phone_customers["+" + CUSTOMER] = {"id": 77, "firstName": "Ольга",
                                                   "lastName": "Соколова"}
    route = await d.client.get(f"{d.webhook}/route", params={
        "call_session_id": ANSWERED, "numa": CUSTOMER, "numb": "74950000000"})
    assert route.status_code == 200, route.text
    await d.play(scenarios.ring_group_lost(LOST, start=start_time(12), ringing=[ANNA, BORIS],
                                           contact=CUSTOMER))
    await d.play(scenarios.answered(ANSWERED, start=start_time(5), employee=ANNA,
                                    contact=CUSTOMER, wait_seconds=7, talk_seconds=95,
                                    media_url=media_url))
    ongoing = scenarios.answered(ONGOING, start=start_time(1), employee=BORIS,
                                 contact="79161234567", media_url=media_url)
    d.sims.uis.register(ongoing, finished=False)
    for notification in ongoing.notifications[:3]:  # ringing, waiting, talking: on the board
        response = await d.sims.uis.send_notification(notification, d.webhook, d.client)
        assert response.status_code == 200, response.text
    await d.play(scenarios.answered(GUEST, start=start_time(3), employee=(13421, "Guest"),
                                    contact="79035550011", media_url=media_url))
    d.sims.crm.api_key = "rotated"
    await d.play(scenarios.lost_in_ivr(DEAD, start=start_time(2), contact="79035550022"))
    d.sims.crm.api_key = CRM_KEY  # the dead letter stays dead until someone retries it

"""Smaller wire points where tracker and its simulators follow the vendors (issue 13, defect 7)."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.support import open_sims, settings_for
from tracker.clients.uis import UisClient
from tracker.errors import RetryableDelivery

ACCOUNT = ("get.account", {})


async def test_limit_exceeded_carries_the_budgets_and_the_wait_comes_from_them(tmp_path):
    """UIS sends metadata.limits with errors as with results: the wait after -32029 is the
    refusal's own minute_reset, also for a client that never saw an answer before."""
    with trio.fail_after(10):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            sims.uis.minute_limit, sims.uis.minute_seconds = 1, 30.0
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            await UisClient(http, settings.uis).data(*ACCOUNT)
            raw = (await http.post(settings.uis.data_api_url, json={
                "jsonrpc": "2.0", "id": 1, "method": "get.account",
                "params": {"access_token": settings.uis.access_token.reveal()}})).json()
            fresh = UisClient(http, settings.uis)
            with pytest.raises(RetryableDelivery) as info:
                await fresh.data(*ACCOUNT)
    error = raw["error"]
    assert (error["code"], error["data"]["mnemonic"]) == (-32029, "limit_exceeded")
    assert error["message"].startswith("Limit per minute has been exceeded")
    limits = error["data"]["metadata"]["limits"]
    assert limits["minute_remaining"] == 0 and 25 <= limits["minute_reset"] <= 30
    assert info.value.retry_after_seconds is not None
    assert 25 <= info.value.retry_after_seconds <= 30  # not the 60 s of "UIS never said"
    assert fresh.last_limits["minute_remaining"] == 0


async def test_a_spent_day_budget_waits_for_the_day_reset_the_refusal_names(tmp_path):
    with trio.fail_after(10):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            sims.uis.day_limit = 1
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            client = UisClient(http, settings.uis)
            await client.data(*ACCOUNT)
            client.last_limits = {"day_remaining": 50, "minute_reset": 7}  # stale, say
            with pytest.raises(RetryableDelivery) as info:
                await client.data(*ACCOUNT)
    assert info.value.retry_after_seconds == client.last_limits["day_reset"] > 60


@pytest.mark.parametrize(("flag", "named"), [
    ("1", True), ("True", True), ("true", True), ("0", False), ("False", False), (None, False)])
async def test_the_crm_simulator_reads_ignore_status_as_the_official_clients_send_it(flag, named):
    """retailCRM's Python client passes Python booleans into the query: True/False as text."""
    with trio.fail_after(10):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            sims.crm.managers["+79991234567"] = {"id": 1, "code": "101"}
            sims.crm.user_statuses[1] = "dinner"
            params = {"phone": "79991234567", "details": "True",
                      **({"ignoreStatus": flag} if flag is not None else {})}
            answer = await http.get(f"{sims.crm_url}/api/v5/telephony/manager", params=params,
                                    headers={"X-API-KEY": sims.crm.api_key})
    assert ("manager" in answer.json()) is named


def test_the_uis_simulator_knows_only_documented_finish_reasons():
    from tracker.simulators.uis import FINISH_REASONS

    assert {"subscriber_busy", "subscriber_disconnects", "operator_busy"} <= FINISH_REASONS
    assert "busy" not in FINISH_REASONS and "contact_busy" not in FINISH_REASONS

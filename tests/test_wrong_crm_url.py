"""A wrong ``crm.url`` (no retailCRM account there) is named once, never retried forever."""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
import trio

from tests.support import open_daemon, open_sims, settings_for
from tracker.clients.crm import AccountNotFound, CrmClient
from tracker.errors import PermanentDelivery
from tracker.simulators import scenarios


async def test_the_simulator_answers_like_an_account_that_does_not_exist():
    """The official PHP client's AccountNotFoundHandler: a non-GET answered 405 text/html."""
    with trio.fail_after(10):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            sims.crm.account_exists = False
            post = await http.post(f"{sims.crm_url}/api/v5/telephony/calls/upload",
                                   data={"calls": "[]"}, headers={"X-API-KEY": "k"})
            get = await http.get(f"{sims.crm_url}/api/v5/integration-modules/x",
                                 headers={"X-API-KEY": "k"})
    assert post.status_code == 405 and post.headers["content-type"].startswith("text/html")
    assert get.status_code == 404
    assert get.json() == {"success": False, "errorMsg": "Account does not exist."}


@pytest.mark.parametrize("method", ["post", "get"])
async def test_a_missing_account_is_a_permanent_refusal_that_names_the_url(tmp_path, method):
    with trio.fail_after(10):
        async with open_sims() as sims, httpx.AsyncClient() as http:
            sims.crm.account_exists = False
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            crm = CrmClient(http, settings.crm)
            with pytest.raises(AccountNotFound) as info:
                if method == "post":
                    await crm.upload_calls([])
                else:
                    await crm.get("integration-modules/uis-tracker")
    assert isinstance(info.value, PermanentDelivery)
    assert str(info.value).startswith(f"retailCRM account not found at {sims.crm_url} (HTTP ")
    assert "check crm.url" in str(info.value)


async def test_uploads_to_a_missing_account_become_dead_letters_at_once(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            sims.crm.account_exists = False
            async with open_daemon(sims, settings) as d:
                await d.play(scenarios.lost_in_ivr(7001, start=datetime(2024, 5, 17, 10, 0, 0)))
                await d.settle()
                [row] = [r for r in d.ctx.store.outbox_for(7001) if r["kind"] == "upload"]
                requests = len(d.crm_requests("telephony/calls/upload"))
    assert row["status"] == "dead" and row["attempts"] == 1
    assert f"retailCRM account not found at {sims.crm_url}" in row["last_error"]
    assert requests == 1

"""The retailCRM simulator's customer, task and order routes answer as retailCRM does."""

from __future__ import annotations

import json

import httpx
import trio

from tracker.simulators import CrmSimulator
from tracker.web.httpserve import serve_app

KEY = "k"


async def test_customers_tasks_orders_as_retailcrm_answers_them():
    crm = CrmSimulator(KEY, known_user_ids={1, 2}, sites={"shop"})
    crm.inactive_user_ids = {2}
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery, httpx.AsyncClient() as client:
            url = await nursery.start(serve_app, crm.app)
            h = {"X-API-KEY": KEY}

            async def post(path, **form):
                data = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in form.items()}
                return await client.post(f"{url}/api/v5/{path}", data=data, headers=h)

            missing = await post("customers/create", site="shop")
            assert missing.status_code == 400
            assert missing.json() == {"success": False, "errorMsg": "Errors in the entity format",
                                      "errors": {"customer": "Parameter 'customer' is missing"}}
            customer = {"externalId": "uis-79991234567", "phones": [{"number": "+79991234567"}]}
            made = await post("customers/create", customer=customer, site="shop")
            assert made.status_code == 201 and made.json() == {"success": True, "id": 1001}
            again = await post("customers/create", customer=customer, site="shop")
            assert again.status_code == 400 and again.json()["success"] is False
            assert (await post("customers/create", customer={}, site="other")).json()[
                "errors"] == {"site": "Site not found."}
            found = await client.get(f"{url}/api/v5/customers", headers=h,
                                     params={"filter[name]": "9991234567", "limit": 20})
            assert [c["id"] for c in found.json()["customers"]] == [1001]
            by_marker = await client.get(f"{url}/api/v5/customers", headers=h, params={
                "filter[externalIds][]": "uis-79991234567"})
            assert [c["id"] for c in by_marker.json()["customers"]] == [1001]
            bad_limit = await client.get(f"{url}/api/v5/customers", headers=h,
                                         params={"limit": 7})
            assert bad_limit.status_code == 400

            no_performer = await post("tasks/create", task={"text": "Call back"})
            assert no_performer.status_code == 400
            assert "performerId" in no_performer.json()["errors"]
            inactive = await post("tasks/create", task={"text": "x", "performerId": 2})
            assert inactive.json()["errors"] == {
                "performerId": "Performer not found or is not active."}
            body = {"text": "Call back +79991234567", "performerId": 1,
                    "datetime": "2024-05-17 14:03", "customer": {"id": 1001}}
            task = await post("tasks/create", task=body)
            assert task.status_code == 201 and task.json() == {"success": True, "id": 5001}
            done = await post("tasks/5001/edit", task={"complete": True})
            assert done.json() == {"success": True} and crm.tasks[5001]["complete"] is True
            assert (await post("tasks/9/edit", task={"complete": True})).status_code == 404

            order = {"externalId": "uis-call-1", "customer": {"id": 1001},
                     "orderMethod": "phone"}
            first = await post("orders/create", order=order, site="shop")
            assert first.status_code == 201 and first.json()["id"] == 9001
            assert (await post("orders/create", order=order, site="shop")).status_code == 400
            nobody = await client.get(f"{url}/api/v5/customers", params={"filter[name]": "x"})
            assert nobody.status_code == 401
            nursery.cancel_scope.cancel()

"""``run.py activate``: register the telephony integration and our callback URLs in retailCRM."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from tracker.clients.crm import CrmClient
from tracker.config import Settings
from tracker.core.phones import to_e164
from tracker.errors import DeliveryError, RetryableDelivery


def telephony(settings: Settings) -> dict[str, Any]:
    """The telephony settings retailCRM needs: our URLs, supported events, extension codes."""
    base = settings.server.public_url.rstrip("/")
    result: dict[str, Any] = {
        "makeCallUrl": f"{base}/crm/make-call",
        "changeUserStatusUrl": f"{base}/crm/user-status",
        "allowEdit": False,
        "inputEventSupported": True,
        "outputEventSupported": True,
        "hangupEventSupported": True,
        "additionalCodes": [{"userId": e.crm_user_id, "code": e.code} for e in settings.employees],
    }
    if settings.crm.site and settings.uis.virtual_phone_number:
        result["externalPhones"] = [{
            "siteCode": settings.crm.site,
            "externalPhone": to_e164(settings.uis.virtual_phone_number, settings.crm.phone_region),
        }]
    return result


def module_v5(settings: Settings) -> dict[str, Any]:
    """The v5 ``integrationModule``: telephony fields only count under ``integrations``."""
    base = settings.server.public_url.rstrip("/")
    return {
        "code": settings.crm.code,
        "integrationCode": settings.crm.code,
        "active": True,
        "name": "UIS",
        "logo": f"{base}/static/logo.svg",
        "clientId": settings.crm.client_id.reveal(),
        "baseUrl": base,
        "accountUrl": f"{base}/",
        "integrations": {"telephony": telephony(settings)},
    }


def configuration_v4(settings: Settings) -> dict[str, Any]:
    """The flat v4 ``configuration`` object."""
    base = settings.server.public_url.rstrip("/")
    return {
        "code": settings.crm.code,
        "clientId": settings.crm.client_id.reveal(),
        "name": "UIS",
        "active": True,
        "image": f"{base}/static/logo.svg",
        **telephony(settings),
    }


def answer_warnings(settings: Settings, body: dict[str, Any]) -> list[str]:
    """Readable warnings for the ids and codes retailCRM says it does not know."""
    # retailCRM (PHP) sends an empty ``info`` as ``[]``; the lists may also sit at the top level.
    info = given if isinstance(given := body.get("info"), dict) else body
    warnings = []
    for value in info.get("notExistUsersIds") or []:
        mapped = [e for e in settings.employees if str(e.crm_user_id) == str(value)]
        where = ", ".join(f"uis_id {e.uis_id}, code {e.code!r}" for e in mapped)
        warnings.append(f"retailCRM has no user with id {value}"
                        + (f" ([[employees]] {where})" if where else "")
                        + ": that employee gets no pop-up; fix crm_user_id")
    for value in info.get("notExistSiteCodes") or []:
        warnings.append(f"retailCRM has no store (site) with code {value!r}: fix crm.site")
    return warnings


async def activate(settings: Settings, out: Callable[[str], None]) -> int:
    """Register (create or update) the integration; print retailCRM's answer. Exit code."""
    code = settings.crm.code
    async with httpx.AsyncClient() as http:
        crm = CrmClient(http, settings.crm)
        try:
            if settings.crm.api_version == "v4":
                answer = await crm.post(f"telephony/setting/{code}/edit",
                                        {"configuration": configuration_v4(settings)})
            else:
                answer = await crm.post(f"integration-modules/{code}/edit",
                                        {"integrationModule": module_v5(settings)})
        except DeliveryError as exc:
            out(f"activation failed: {exc}")
            if isinstance(exc, RetryableDelivery) and exc.detail and exc.detail not in str(exc):
                out("retailCRM said: " + " ".join(exc.detail.split())[:500])
            return 1
    out(f"retailCRM answered HTTP {answer.status}:")
    out(json.dumps(answer.body, ensure_ascii=False, indent=2))
    for warning in answer_warnings(settings, answer.body):
        out(f"warning: {warning}")
    if not settings.employees:
        out("warning: no [[employees]]: no extension codes registered, nobody gets a pop-up")
    out(f"telephony {code!r} is registered; makeCallUrl and changeUserStatusUrl point at "
        f"{settings.server.public_url.rstrip('/')}/crm/…")
    return 0

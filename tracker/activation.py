"""``run.py activate``: register the telephony integration and our callback URLs in retailCRM."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from .config import Settings
from .crm import CrmClient
from .errors import DeliveryError
from .phones import to_e164


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
            return 1
    out(f"retailCRM answered HTTP {answer.status}:")
    out(json.dumps(answer.body, ensure_ascii=False, indent=2))
    info = answer.body.get("info") if isinstance(answer.body.get("info"), dict) else answer.body
    for key, label in (("notExistUsersIds", "retailCRM has no user with id"),
                       ("notExistSiteCodes", "retailCRM has no store (site) with code")):
        for value in info.get(key) or []:
            out(f"warning: {label} {value} (check [[employees]] / crm.site)")
    out(f"telephony {code!r} is registered; makeCallUrl and changeUserStatusUrl point at "
        f"{settings.server.public_url.rstrip('/')}/crm/…")
    return 0

"""``run.py check``: what is wrong with the setup, as a table an operator can act on.

It reads, never writes: the configuration (already validated by the time it runs), UIS
(``get.account`` for the time zone, ``get.employees`` for the mapping), retailCRM (the API key
and the registered integration, each mapped user), and with ``deals.enabled`` whether both keys
may do what loading deals takes. Every row is ``ok``, ``warn`` (calls still
flow, but something is off) or ``FAIL``; the exit status is 0 only when every row is ``ok``.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from tracker.cli.activation import telephony
from tracker.clients.crm import AccountNotFound, CrmClient
from tracker.clients.uis import UisClient
from tracker.config import Settings, exposed_mode
from tracker.errors import DeliveryError, PermanentDelivery

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Finding:
    """One row of the report."""

    area: str  # config | uis | crm | mapping | deals
    result: str  # ok | warn | FAIL
    detail: str


def render(findings: list[Finding]) -> str:
    """The findings as an aligned plain-text table with a verdict line."""
    header = Finding("AREA", "RESULT", "DETAIL")
    rows = [header, *findings]
    area_w = max(len(f.area) for f in rows)
    result_w = max(len(f.result) for f in rows)
    lines = [f"{f.area:<{area_w}}  {f.result:<{result_w}}  {f.detail}" for f in rows]
    problems = sum(f.result != OK for f in findings)
    lines.append("everything is right" if not problems else
                 f"{problems} problem{'s' if problems != 1 else ''} found")
    return "\n".join(lines)


def config_findings(problems: list[str]) -> list[Finding]:
    """Rows for an invalid configuration (nothing else can be checked then)."""
    return [Finding("config", FAIL, problem) for problem in problems]


async def check(settings: Settings, out: Callable[[str], None], *,
                config_path: str | None = None) -> int:
    """Run every check, print the table; 0 only when every row is ok."""
    async with httpx.AsyncClient() as http:
        findings = await run_checks(settings, UisClient(http, settings.uis),
                                    CrmClient(http, settings.crm))
    exposed = None if config_path is None else exposed_mode(config_path)
    if exposed is not None:
        findings.insert(1, Finding("config", WARN, exposed))
    out(render(findings))
    return 0 if all(f.result == OK for f in findings) else 1


async def run_checks(settings: Settings, uis: UisClient, crm: CrmClient) -> list[Finding]:
    """Every finding, in reading order: config, UIS, retailCRM, then the mapping."""
    findings = [Finding("config", OK, f"valid; {len(settings.employees)} employees mapped")]
    findings += _config_mapping(settings)
    uis_ids = await _check_uis(settings, uis, findings)
    await _check_crm(settings, crm, findings)
    if uis_ids is not None:
        findings += _uis_mapping(settings, uis_ids)
    if settings.deals.enabled:
        await _check_deals(settings, uis, crm, findings)
    return findings


async def _check_deals(settings: Settings, uis: UisClient, crm: CrmClient,
                       findings: list[Finding]) -> None:
    """With ``deals.enabled``: the UIS key may use the deal methods (``get.sales_funnel``
    answers: the end-to-end analytics component is on and the key's rights include it) and
    the retailCRM key may read the order history and the references the funnel comes from."""
    try:
        funnels = await uis.data("get.sales_funnel", {"limit": 1})
    except DeliveryError as exc:
        findings.append(Finding("deals", FAIL, "the UIS key may not load deals (get.sales_funnel:"
                                f" {_reason(exc)}): turn on end-to-end analytics for the "
                                "account and allow the key its methods, or set "
                                "deals.enabled = false"))
    else:
        total = (funnels.get("metadata") or {}).get("total_items")
        findings.append(Finding("deals", OK, "the UIS key may load deals "
                                f"({total if total is not None else 'some'} sales funnels)"))
    for endpoint, params in (("orders/history", {"limit": 20}), ("reference/statuses", None),
                             ("users", {"limit": 20})):
        try:
            await crm.get(endpoint, params)
        except DeliveryError as exc:
            findings.append(Finding("deals", FAIL, f"retailCRM {endpoint}: {_reason(exc)} "
                                    "(the key needs order and reference read access)"))
            return
    findings.append(Finding("deals", OK, "the retailCRM key may read orders, their history, "
                            "statuses and users"))


def _config_mapping(settings: Settings) -> list[Finding]:
    # Config validation already refuses a uis_id or a code mapped twice; a user is allowed twice
    # by the format but credits two UIS employees' calls to one person.
    by_user = Counter(e.crm_user_id for e in settings.employees)
    return [Finding("mapping", WARN, f"retailCRM user {user} is mapped to several UIS employees: "
                    + ", ".join(str(e.uis_id) for e in settings.employees
                                if e.crm_user_id == user))
            for user, count in sorted(by_user.items()) if count > 1]


async def _check_uis(settings: Settings, uis: UisClient,
                     findings: list[Finding]) -> dict[int, str] | None:
    try:
        account = await uis.data("get.account", {})
    except DeliveryError as exc:
        findings.append(Finding("uis", FAIL, f"get.account at {settings.uis.data_api_url}: "
                                f"{_reason(exc)}"))
        return None
    rows = [r for r in account.get("data") or [] if isinstance(r, dict)]
    first = rows[0] if rows else {}
    findings.append(Finding("uis", OK, f"Data API reachable: app {first.get('app_id')} "
                            f"{first.get('name')!r}"))
    zone = first.get("timezone")
    if zone and zone != settings.crm.timezone:
        findings.append(Finding("uis", FAIL, f"time zone mismatch: the UIS account is in {zone}, "
                                f"crm.timezone is {settings.crm.timezone}"))
    elif zone:
        findings.append(Finding("uis", OK, f"time zone {zone} matches crm.timezone"))
    else:
        findings.append(Finding("uis", WARN, "get.account did not say the time zone"))
    try:
        employees = await uis.data("get.employees", {"fields": ["id", "full_name"]})
    except DeliveryError as exc:
        findings.append(Finding("uis", FAIL, f"get.employees: {_reason(exc)}"))
        return None
    result = {r["id"]: str(r.get("full_name") or "") for r in employees.get("data") or []
              if isinstance(r, dict) and isinstance(r.get("id"), int)}
    findings.append(Finding("uis", OK, f"{len(result)} employees in UIS"))
    return result


def _uis_mapping(settings: Settings, uis_ids: dict[int, str]) -> list[Finding]:
    mapped = {e.uis_id for e in settings.employees}
    rows = [Finding("mapping", WARN, f"UIS employee {uid} ({name}) has no [[employees]] entry: "
                    "no pop-up, calls uploaded without an employee")
            for uid, name in sorted(uis_ids.items()) if uid not in mapped]
    rows += [Finding("mapping", FAIL, f"[[employees]] uis_id {e.uis_id} does not exist in UIS")
             for e in settings.employees if e.uis_id not in uis_ids]
    return rows


async def _check_crm(settings: Settings, crm: CrmClient, findings: list[Finding]) -> None:
    code, version = settings.crm.code, settings.crm.api_version
    endpoint = f"telephony/setting/{code}" if version == "v4" else f"integration-modules/{code}"
    try:
        answer = await crm.get(endpoint)
    except AccountNotFound as exc:
        findings.append(Finding("crm", FAIL, str(exc)))
        return
    except PermanentDelivery as exc:
        if exc.status == 404 and "API method not found" not in exc.detail:
            findings.append(Finding("crm", OK, f"API key accepted by {settings.crm.url}"))
            findings.append(Finding("crm", FAIL, f"telephony {code!r} is not registered: "
                                    "run `python run.py activate`"))
            await _check_users(settings, crm, findings)
        else:
            findings.append(Finding("crm", FAIL, f"{endpoint}: {_reason(exc)}"))
        return
    except DeliveryError as exc:
        findings.append(Finding("crm", FAIL, f"cannot reach {settings.crm.url}: {_reason(exc)}"))
        return
    findings.append(Finding("crm", OK, f"API key accepted by {settings.crm.url}"))
    module = answer.body.get("configuration" if version == "v4" else "integrationModule") or {}
    registered = module if version == "v4" else (module.get("integrations") or {}).get(
        "telephony") or {}
    findings += _compare_registration(settings, module, registered)
    await _check_users(settings, crm, findings)


def _compare_registration(settings: Settings, module: dict[str, Any],
                          registered: dict[str, Any]) -> list[Finding]:
    code = settings.crm.code
    expected = telephony(settings)
    stale = [name for name in ("makeCallUrl", "changeUserStatusUrl")
             if registered.get(name) != expected[name]]
    rows = [Finding("crm", FAIL, f"registered {name} is {registered.get(name)!r}, expected "
                    f"{expected[name]!r}: run `python run.py activate`") for name in stale]
    if module.get("active") is False:
        rows.append(Finding("crm", FAIL, f"telephony {code!r} is registered but not active"))
    client_id = module.get("clientId")
    if client_id is not None and not hmac.compare_digest(
            str(client_id).encode(), settings.crm.client_id.reveal().encode()):
        rows.append(Finding("crm", FAIL, "the registered clientId differs from crm.client_id: "
                            "retailCRM's clicks would be refused; run `python run.py activate`"))
    codes = [c.get("code") for c in registered.get("additionalCodes") or []
             if isinstance(c, dict)]
    for dup, count in sorted(Counter(codes).items(), key=lambda kv: str(kv[0])):
        if count > 1:
            rows.append(Finding("mapping", FAIL, f"code {dup!r} is registered {count} times in "
                                "retailCRM's additionalCodes"))
    wanted = {(c["userId"], c["code"]) for c in expected["additionalCodes"]}
    have = {(c.get("userId"), c.get("code")) for c in registered.get("additionalCodes") or []
            if isinstance(c, dict)}
    if wanted != have:
        rows.append(Finding("crm", FAIL, "the extension codes registered in retailCRM differ "
                            "from [[employees]]: run `python run.py activate`"))
    if not rows:
        rows.append(Finding("crm", OK, f"telephony {code!r} is registered and up to date"))
    return rows


async def _check_users(settings: Settings, crm: CrmClient, findings: list[Finding]) -> None:
    for employee in settings.employees:
        try:
            await crm.get(f"users/{employee.crm_user_id}")
        except PermanentDelivery as exc:
            if exc.status == 404:
                findings.append(Finding("mapping", FAIL, f"[[employees]] crm_user_id "
                                        f"{employee.crm_user_id} (UIS {employee.uis_id}) does "
                                        "not exist in retailCRM"))
            else:
                findings.append(Finding("crm", FAIL, f"users/{employee.crm_user_id}: "
                                        f"{_reason(exc)}"))
                return
        except DeliveryError as exc:
            findings.append(Finding("crm", FAIL, f"users/{employee.crm_user_id}: {_reason(exc)}"))
            return


def _reason(exc: DeliveryError) -> str:
    # A refusal's message already carries the upstream's words; a transport failure's detail
    # (an HTML 503 page, say) may add something.
    if isinstance(exc, PermanentDelivery) or not exc.detail or exc.detail in str(exc):
        return str(exc)
    return f"{exc} ({' '.join(exc.detail.split())[:200]})"

"""``run.py activate`` against the retailCRM simulator, v5 and v4, as a function and a command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support import CLIENT_ID, CRM_KEY, Sims, open_sims, settings_for
from tracker.cli import activation

ROOT = Path(__file__).resolve().parent.parent
BASE = "http://tracker.test"
TELEPHONY = {
    "makeCallUrl": f"{BASE}/crm/make-call",
    "changeUserStatusUrl": f"{BASE}/crm/user-status",
    "allowEdit": False,
    "inputEventSupported": True,
    "outputEventSupported": True,
    "hangupEventSupported": True,
    "additionalCodes": [{"userId": 1, "code": "101"}, {"userId": 2, "code": "102"},
                        {"userId": 3, "code": "103"}],
    "externalPhones": [{"siteCode": "main-shop", "externalPhone": "+74950000000"}],
}
MODULE_V5 = {
    "code": "uis-tracker", "integrationCode": "uis-tracker", "active": True, "name": "UIS",
    "logo": f"{BASE}/static/logo.svg", "clientId": CLIENT_ID, "baseUrl": BASE,
    "accountUrl": f"{BASE}/", "integrations": {"telephony": TELEPHONY},
}
CONFIGURATION_V4 = {"code": "uis-tracker", "clientId": CLIENT_ID, "name": "UIS", "active": True,
                    "image": f"{BASE}/static/logo.svg", **TELEPHONY}


async def activate(sims: Sims, tmp_path: Path, **sections: Any) -> tuple[int, list[str]]:
    sections = {**sections, "crm": {"site": "main-shop", **sections.get("crm", {})}}
    settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections)
    lines: list[str] = []
    code = await activation.activate(settings, lines.append)
    return code, lines


@pytest.mark.parametrize(("version", "path", "field", "expected", "store"), [
    ("v5", "/api/v5/integration-modules/uis-tracker/edit", "integrationModule", MODULE_V5,
     "modules"),
    ("v4", "/api/v4/telephony/setting/uis-tracker/edit", "configuration", CONFIGURATION_V4,
     "telephony_settings"),
])
async def test_activation_registers_the_urls_codes_and_phones_idempotently(
        tmp_path, version, path, field, expected, store):
    with trio.fail_after(20):
        async with open_sims(sites={"main-shop"}) as sims:
            first = await activate(sims, tmp_path, crm={"api_version": version})
            again = await activate(sims, tmp_path, crm={"api_version": version})
            assert first[0] == again[0] == 0
            requests = sims.crm.requests
            assert [(r.method, r.path, r.status, r.api_key) for r in requests] == [
                ("POST", path, 201, CRM_KEY), ("POST", path, 200, CRM_KEY)]
            assert all(list(r.form) == [field] for r in requests)  # one JSON form field
            assert requests[0].data[field] == requests[1].data[field] == expected
            assert getattr(sims.crm, store) == {"uis-tracker": expected}
            assert first[1][0] == "retailCRM answered HTTP 201:"
            assert again[1][0] == "retailCRM answered HTTP 200:"
            assert json.loads("\n".join(first[1][1:-1]))["success"] is True
            assert first[1][-1] == ("telephony 'uis-tracker' is registered; makeCallUrl and "
                                    f"changeUserStatusUrl point at {BASE}/crm/…")
            assert CLIENT_ID not in "\n".join(first[1])


async def test_without_a_store_no_external_phones_are_sent(tmp_path):
    with trio.fail_after(20):
        async with open_sims() as sims:
            code, _ = await activate(sims, tmp_path, crm={"site": ""})
            assert code == 0
            telephony = sims.crm.modules["uis-tracker"]["integrations"]["telephony"]
            assert "externalPhones" not in telephony
            assert telephony["additionalCodes"] == TELEPHONY["additionalCodes"]


async def test_unknown_users_and_stores_are_readable_warnings(tmp_path):
    employees = [{"uis_id": 101, "crm_user_id": 1, "code": "101"},
                 {"uis_id": 102, "crm_user_id": 77, "code": "777"}]
    with trio.fail_after(20):
        async with open_sims(sites={"main-shop"}) as sims:
            code, lines = await activate(sims, tmp_path, crm={"site": "other-shop"},
                                         employees=employees)
            assert code == 0  # registered all the same
            warnings = [line for line in lines if line.startswith("warning: ")]
            assert warnings == [
                "warning: retailCRM has no user with id 77 ([[employees]] uis_id 102, code "
                "'777'): that employee gets no pop-up; fix crm_user_id",
                "warning: retailCRM has no store (site) with code 'other-shop': fix crm.site",
            ]


async def test_no_employees_is_a_warning(tmp_path):
    with trio.fail_after(20):
        async with open_sims() as sims:
            code, lines = await activate(sims, tmp_path, employees=[])
            assert code == 0
            assert ("warning: no [[employees]]: no extension codes registered, nobody gets a "
                    "pop-up") in lines


def test_an_empty_info_list_from_php_is_no_warning():
    settings = settings_for(Path("/tmp"), "http://uis.test", "http://crm.test")
    assert activation.answer_warnings(settings, {"success": True, "info": []}) == []


@pytest.mark.parametrize(("setup", "words"), [
    ({"crm": {"api_key": "wrong"}}, 'Wrong "apiKey" value.'),
    ({"fault": "503"}, "HTTP 503"),
    ({"crm": {"url": "http://127.0.0.1:9"}}, "ConnectError"),
])
async def test_failure_exits_non_zero_with_retailcrm_s_reason(tmp_path, setup, words):
    with trio.fail_after(20):
        async with open_sims() as sims:
            sims.crm.fault = setup.get("fault")
            code, lines = await activate(sims, tmp_path, **{k: v for k, v in setup.items()
                                                             if k != "fault"})
            assert code == 1
            assert lines[0].startswith("activation failed: ") and words in lines[0]
            assert sims.crm.modules == {}


def write_config(path: Path, sims: Sims, **extra: str) -> Path:
    """A TOML file pointing at the simulators."""
    crm_extra = "".join(f'{k} = "{v}"\n' for k, v in extra.items())
    path.write_text(f"""
[server]
public_url = "{BASE}"
[database]
path = "{path.parent / 'tracker.db'}"
[uis]
webhook_secret = "test-webhook-secret-0123456789"
access_token = "test-uis-token"
data_api_url = "{sims.uis_url}/dataapi/v2.0"
call_api_url = "{sims.uis_url}/callapi/v4.0"
virtual_phone_number = "74950000000"
[crm]
url = "{sims.crm_url}"
api_key = "{CRM_KEY}"
client_id = "{CLIENT_ID}"
{crm_extra}
[[employees]]
uis_id = 101
crm_user_id = 1
code = "101"
""", encoding="utf-8")
    path.chmod(0o600)  # it holds secrets: check warns about a file others can read
    return path


async def run_cli(*args: str) -> trio.CompletedProcess:
    return await trio.run_process([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT,
                                  capture_stdout=True, capture_stderr=True, check=False)


async def test_run_py_activate_registers_and_exits_zero(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            config = write_config(tmp_path / "tracker.toml", sims)
            done = await run_cli("activate", "--config", str(config))
            assert done.returncode == 0, done.stderr.decode()
            assert "retailCRM answered HTTP 201:" in done.stdout.decode()
            telephony = sims.crm.modules["uis-tracker"]["integrations"]["telephony"]
            assert telephony["additionalCodes"] == [{"userId": 1, "code": "101"}]
            failed = await run_cli("activate", "--config",
                                   str(write_config(tmp_path / "bad.toml", sims,
                                                    api_version="v4", code="x/y")))
            assert failed.returncode == 1
            assert "activation failed" in failed.stdout.decode()

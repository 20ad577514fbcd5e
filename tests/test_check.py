"""``run.py check`` on correct and broken setups: every problem named, exit 0 only if none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support import Sims, open_sims, settings_for
from tests.test_activation import run_cli, write_config
from tracker.cli import activation, check
from tracker.cli.check import FAIL, OK, WARN, Finding


async def run(sims: Sims, tmp_path: Path, **sections: Any) -> tuple[int, str]:
    settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections)
    lines: list[str] = []
    code = await check.check(settings, lines.append)
    return code, "\n".join(lines)


async def activated(sims: Sims, tmp_path: Path, **sections: Any) -> None:
    settings = settings_for(tmp_path, sims.uis_url, sims.crm_url, **sections)
    assert await activation.activate(settings, lambda line: None) == 0


def rows(output: str) -> list[tuple[str, str, str]]:
    """The table's rows as (area, result, detail), header and verdict left out."""
    found = []
    for line in output.splitlines()[1:-1]:
        area, result, detail = line.split(maxsplit=2)
        found.append((area, result, detail))
    return found


def test_render_aligns_columns_and_counts_problems():
    text = check.render([Finding("config", OK, "valid"), Finding("mapping", WARN, "x"),
                         Finding("uis", FAIL, "y")])
    assert text.splitlines() == [
        "AREA     RESULT  DETAIL",
        "config   ok      valid",
        "mapping  warn    x",
        "uis      FAIL    y",
        "2 problems found",
    ]


@pytest.mark.parametrize("version", ["v5", "v4"])
async def test_correct_setup_is_all_ok_and_exits_zero(tmp_path, version):
    with trio.fail_after(20):
        async with open_sims() as sims:
            await activated(sims, tmp_path, crm={"api_version": version})
            code, output = await run(sims, tmp_path, crm={"api_version": version})
            assert code == 0, output
            assert rows(output) == [
                ("config", OK, "valid; 3 employees mapped"),
                ("uis", OK, "Data API reachable: app 12345 'Simulated account'"),
                ("uis", OK, "time zone Europe/Moscow matches crm.timezone"),
                ("uis", OK, "3 employees in UIS"),
                ("crm", OK, f"API key accepted by {sims.crm_url}"),
                ("crm", OK, "telephony 'uis-tracker' is registered and up to date"),
            ]
            assert output.splitlines()[-1] == "everything is right"
            users = [r.endpoint for r in sims.crm.requests if r.method == "GET"]
            assert users[1:] == ["users/1", "users/2", "users/3"]
            assert all(r.method == "GET" for r in sims.crm.requests[1:])  # it never writes


async def test_broken_setup_names_every_problem(tmp_path):
    employees = [{"uis_id": 101, "crm_user_id": 1, "code": "101"},
                 {"uis_id": 102, "crm_user_id": 77, "code": "777"},   # no such CRM user
                 {"uis_id": 109, "crm_user_id": 3, "code": "103"},    # no such UIS employee
                 {"uis_id": 105, "crm_user_id": 1, "code": "105"}]    # user 1 twice, not in UIS
    with trio.fail_after(20):
        async with open_sims() as sims:
            sims.uis.employees[104] = {"id": 104, "full_name": "Геннадий Орлов"}
            code, output = await run(sims, tmp_path, employees=employees,
                                     crm={"timezone": "Asia/Yekaterinburg"})
            assert code == 1
            problems = [r for r in rows(output) if r[1] != OK]
            assert problems == [
                ("mapping", WARN, "retailCRM user 1 is mapped to several UIS employees: 101, 105"),
                ("uis", FAIL, "time zone mismatch: the UIS account is in Europe/Moscow, "
                              "crm.timezone is Asia/Yekaterinburg"),
                ("crm", FAIL, "telephony 'uis-tracker' is not registered: run `python run.py "
                              "activate`"),
                ("mapping", FAIL, "[[employees]] crm_user_id 77 (UIS 102) does not exist in "
                                  "retailCRM"),
                ("mapping", WARN, "UIS employee 103 (Вера Смирнова) has no [[employees]] entry: "
                                  "no pop-up, calls uploaded without an employee"),
                ("mapping", WARN, "UIS employee 104 (Геннадий Орлов) has no [[employees]] "
                                  "entry: no pop-up, calls uploaded without an employee"),
                ("mapping", FAIL, "[[employees]] uis_id 109 does not exist in UIS"),
                ("mapping", FAIL, "[[employees]] uis_id 105 does not exist in UIS"),
            ]
            assert output.splitlines()[-1] == "8 problems found"


async def test_a_stale_registration_is_named_with_what_to_run(tmp_path):
    with trio.fail_after(20):
        async with open_sims() as sims:
            await activated(sims, tmp_path, server={"public_url": "https://old.example.com"},
                            crm={"client_id": "an-older-client-id-0000"},
                            employees=[{"uis_id": 101, "crm_user_id": 1, "code": "101"}])
            code, output = await run(sims, tmp_path)
            assert code == 1
            assert [r for r in rows(output) if r[1] != OK] == [
                ("crm", FAIL, "registered makeCallUrl is 'https://old.example.com/crm/make-call',"
                              " expected 'http://tracker.test/crm/make-call': run `python run.py "
                              "activate`"),
                ("crm", FAIL, "registered changeUserStatusUrl is "
                              "'https://old.example.com/crm/user-status', expected "
                              "'http://tracker.test/crm/user-status': run `python run.py "
                              "activate`"),
                ("crm", FAIL, "the registered clientId differs from crm.client_id: retailCRM's "
                              "clicks would be refused; run `python run.py activate`"),
                ("crm", FAIL, "the extension codes registered in retailCRM differ from "
                              "[[employees]]: run `python run.py activate`"),
            ]


async def test_duplicate_codes_registered_in_retailcrm_are_named(tmp_path):
    with trio.fail_after(20):
        async with open_sims() as sims:
            await activated(sims, tmp_path)
            telephony = sims.crm.modules["uis-tracker"]["integrations"]["telephony"]
            telephony["additionalCodes"].append({"userId": 9, "code": "101"})
            code, output = await run(sims, tmp_path)
            assert code == 1
            assert ("mapping", FAIL, "code '101' is registered 2 times in retailCRM's "
                                     "additionalCodes") in rows(output)


@pytest.mark.parametrize(("sections", "expected"), [
    ({"uis": {"data_api_url": "http://127.0.0.1:9/dataapi/v2.0"}},
     [("uis", FAIL, "get.account at http://127.0.0.1:9/dataapi/v2.0: UIS get.account: "
                    "ConnectError")]),
    ({"uis": {"access_token": "wrong"}},
     [("uis", FAIL, "get.account at {uis}/dataapi/v2.0: UIS get.account: "
                    "access_token_invalid: Access token invalid")]),
    ({"crm": {"api_key": "wrong"}},
     [("crm", FAIL, "integration-modules/uis-tracker: retailCRM integration-modules/uis-tracker:"
                    " HTTP 403: Wrong \"apiKey\" value.")]),
    ({"crm": {"url": "http://127.0.0.1:9"}},
     [("crm", FAIL, "cannot reach http://127.0.0.1:9: retailCRM integration-modules/"
                    "uis-tracker: ConnectError")]),
])
async def test_unreachable_or_refusing_upstreams_are_named_with_their_error(tmp_path, sections,
                                                                         expected):
    with trio.fail_after(20):
        async with open_sims() as sims:
            await activated(sims, tmp_path)
            code, output = await run(sims, tmp_path, **sections)
            assert code == 1
            problems = [r for r in rows(output) if r[1] != OK]
            assert len(problems) == 1, output
            area, result, detail = problems[0]
            want = expected[0]
            assert (area, result) == want[:2]
            assert detail.startswith(want[2].format(uis=sims.uis_url)), detail


async def test_run_py_check_exit_status_and_table(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            good = write_config(tmp_path / "good.toml", sims)
            await activated(sims, tmp_path, employees=[{"uis_id": 101, "crm_user_id": 1,
                                                        "code": "101"}])
            sims.uis.employees = {101: sims.uis.employees[101]}
            done = await run_cli("check", "--config", str(good))
            assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
            assert done.stdout.decode().splitlines()[-1] == "everything is right"
            sims.uis.employees[104] = {"id": 104, "full_name": "Геннадий Орлов"}
            done = await run_cli("check", "--config", str(good))
            assert done.returncode == 1
            assert "UIS employee 104 (Геннадий Орлов) has no [[employees]] entry" in \
                done.stdout.decode()
            duplicate = good.read_text() + '[[employees]]\nuis_id = 104\ncrm_user_id = 4\n' \
                                           'code = "101"\n'
            (tmp_path / "dup.toml").write_text(duplicate, encoding="utf-8")
            done = await run_cli("check", "--config", str(tmp_path / "dup.toml"))
            assert done.returncode == 2
            assert "config  FAIL    employees[1].code: '101' is used twice" in \
                done.stdout.decode()


async def test_a_crm_url_without_an_account_is_named_as_such(tmp_path):
    with trio.fail_after(20):
        async with open_sims() as sims:
            await activated(sims, tmp_path)
            sims.crm.account_exists = False
            code, output = await run(sims, tmp_path)
    assert code == 1
    problems = [r for r in rows(output) if r[1] != OK]
    assert problems == [("crm", FAIL, f"retailCRM account not found at {sims.crm_url} (HTTP 404: "
                                      "Account does not exist.): check crm.url")], output

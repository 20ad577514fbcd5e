"""Hardening: constant-time secret checks, the sender allow-list, request limits, secrets kept out
of every output, owner-only files, the start-up integrity check, backups, journal retention, and
dead letters replayed from the command line while the daemon runs."""

from __future__ import annotations

import ast
import logging
import os
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest
import trio

from tests.procs import ROOT, free_port, run_cli, write_config
from tests.support import (
    ANNA,
    CLIENT_ID,
    CRM_KEY,
    SECRET,
    UIS_TOKEN,
    corrupt_an_index,
    open_daemon,
    open_sims,
    open_system,
    settings_for,
    start_time,
)
from tracker.config import RetentionSettings
from tracker.core.calls import Call
from tracker.db import maintenance
from tracker.db.store import Store
from tracker.delivery.dispatcher import EXTERNAL_CHECK_SECONDS
from tracker.simulators import scenarios
from tracker.web import guard
from tracker.web.httpserve import serve_app

SESSION = 555_000_001


# -- constant-time comparisons -----------------------------------------------------------------


def _reveals(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
               and n.func.attr == "reveal" for n in ast.walk(node))


def plain_secret_comparisons(source: str) -> list[int]:
    """Lines comparing a revealed secret (or a name bound to one) with ``==``/``!=``."""
    tree = ast.parse(source)
    tainted = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
               and _reveals(node.value) for target in node.targets if isinstance(target, ast.Name)}
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq)
                                                 for op in node.ops):
            operands = [node.left, *node.comparators]
            if any(_reveals(o) or (isinstance(o, ast.Name) and o.id in tainted)
                   for o in operands):
                lines.append(node.lineno)
    return lines


def test_the_secret_scan_sees_a_plain_comparison():
    assert plain_secret_comparisons("ok = given == s.client_id.reveal()") == [1]
    assert plain_secret_comparisons("k = s.key.reveal().encode()\nif given != k: pass") == [2]
    assert plain_secret_comparisons("hmac.compare_digest(a, s.key.reveal().encode())") == []


@pytest.mark.parametrize("module", sorted(str(p.relative_to(ROOT / "tracker"))
                                           for p in (ROOT / "tracker").glob("**/*.py")))
def test_secrets_are_only_compared_in_constant_time(module):
    source = (ROOT / "tracker" / module).read_text(encoding="utf-8")
    assert plain_secret_comparisons(source) == [], \
        f"{module}: compare secrets with hmac.compare_digest"


# -- sender allow-list -------------------------------------------------------------------------


@pytest.mark.parametrize(("peer", "forwarded", "allow", "trusted", "expected"), [
    ("203.0.113.7", [], [], [], True),  # no list: anyone (the URL secret still guards)
    ("203.0.113.7", [], ["203.0.113.0/24"], [], True),
    ("198.51.100.1", [], ["203.0.113.0/24"], [], False),
    ("::ffff:203.0.113.7", [], ["203.0.113.0/24"], [], True),  # IPv4-mapped IPv6 peer
    ("2001:db8::5", [], ["2001:db8::/32"], [], True),
    # a header from an untrusted peer proves nothing
    ("198.51.100.1", ["203.0.113.7"], ["203.0.113.0/24"], [], False),
    # behind a trusted proxy: the rightmost untrusted hop is the sender
    ("10.0.0.2", ["203.0.113.7"], ["203.0.113.0/24"], ["10.0.0.0/8"], True),
    ("10.0.0.2", ["198.51.100.1"], ["203.0.113.0/24"], ["10.0.0.0/8"], False),
    ("10.0.0.2", ["203.0.113.7, 198.51.100.1"], ["203.0.113.0/24"], ["10.0.0.0/8"], False),
    ("10.0.0.2", ["198.51.100.1, 203.0.113.7"], ["203.0.113.0/24"], ["10.0.0.0/8"], True),
    ("10.0.0.2", ["203.0.113.7", "10.0.0.9"], ["203.0.113.0/24"], ["10.0.0.0/8"], True),
    ("10.0.0.2", ["garbage"], ["203.0.113.0/24"], ["10.0.0.0/8"], False),
    ("10.0.0.2", [], ["203.0.113.0/24"], ["10.0.0.0/8"], False),  # the proxy itself
    (None, [], ["203.0.113.0/24"], [], False),
])
def test_sender_allow_list(peer, forwarded, allow, trusted, expected):
    assert guard.allowed(peer, forwarded, guard.networks(allow),
                         guard.networks(trusted)) is expected


@pytest.mark.parametrize(("section", "forwarded", "status"), [
    ({"uis": {"allowed_ips": ["127.0.0.1"]}}, None, 200),
    ({"uis": {"allowed_ips": ["203.0.113.0/24"]}}, None, 403),
    ({"uis": {"allowed_ips": ["203.0.113.0/24"]}}, "203.0.113.9", 403),  # 127.0.0.1 not trusted
    ({"uis": {"allowed_ips": ["203.0.113.0/24"]}, "server": {"trusted_proxies": ["127.0.0.1"]}},
     "203.0.113.9", 200),
    ({"uis": {"allowed_ips": ["203.0.113.0/24"]}, "server": {"trusted_proxies": ["127.0.0.1"]}},
     "198.51.100.1", 403),
])
async def test_notifications_from_senders_outside_the_list_are_refused(tmp_path, section,
                                                                        forwarded, status):
    with trio.fail_after(20):
        async with open_system(tmp_path, **section) as d:
            headers = {"content-type": "application/json"}
            if forwarded:
                headers["X-Forwarded-For"] = forwarded
            response = await d.post({"event": "lost_call", "call_session_id": SESSION,
                                     "contact_phone_number": "79991234567"}, headers=headers)
            assert response.status_code == status
            if status == 403:
                assert response.json()["error"] == "forbidden"
                assert d.count("events") == 0 and d.count("calls") == 0
                # other routes are not the notification's business
                assert (await d.client.get(f"{d.url}/healthz")).status_code == 200
            else:
                assert d.count("calls") == 1


# -- size and time limits ----------------------------------------------------------------------


async def test_slow_headers_and_slow_bodies_are_cut_off(tmp_path):
    with trio.fail_after(20):
        async with open_system(tmp_path, server={"request_timeout_seconds": 1}) as d:
            host, port = d.url.removeprefix("http://").split(":")
            # headers that never end: the connection is closed
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"POST /webhooks/uis/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = trio.current_time()
            with trio.fail_after(5):
                while await stream.receive_some(1000):
                    pass
            assert trio.current_time() - started < 3
            await stream.aclose()
            # a body that never arrives: 408
            stream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(f"POST /webhooks/uis/{SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                                  '{"event":'.encode())
            with trio.fail_after(5):
                answer = await stream.receive_some(1000)
            assert answer.startswith(b"HTTP/1.1 408"), answer
            await stream.aclose()
            assert d.count("events") == 0
            assert (await d.client.get(f"{d.url}/healthz")).status_code == 200


async def test_a_handler_that_overruns_the_deadline_is_answered_503():
    from quart import Response
    from quart_trio import QuartTrio

    app = QuartTrio(__name__)

    @app.route("/slow")
    async def slow() -> str:
        await trio.sleep(30)
        return "late"

    @app.route("/fast")
    async def fast() -> str:
        return "ok"

    @app.route("/stream")
    async def stream() -> Response:
        async def chunks():
            for i in range(5):
                await trio.sleep(0.1)
                yield f"{i}".encode()

        response = Response(chunks(), content_type="text/plain")
        response.timeout = None  # as a server-sent-events stream does
        return response

    app.asgi_app = guard.with_limits(app.asgi_app, max_body_bytes=1000, timeout_seconds=0.3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_app, app)
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{url}/slow")
                assert response.status_code == 503 and response.json()["error"] == "timeout"
                assert (await client.get(f"{url}/fast")).text == "ok"
                # an answer that started in time may take longer to stream
                assert (await client.get(f"{url}/stream")).text == "01234"
            nursery.cancel_scope.cancel()


# -- secrets stay secret -----------------------------------------------------------------------


async def test_no_secret_reaches_logs_journal_pages_or_database(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    secrets = [SECRET, UIS_TOKEN, CRM_KEY, CLIENT_ID]
    with trio.fail_after(30):
        async with open_system(tmp_path, uis={"record_wait_seconds": 0.3},
                               admin={"allow_loopback_without_key": True}) as d:
            d.sims.uis.fail_next("get.call_legs_report", "access_token_invalid", -32001)
            await d.play(scenarios.answered(SESSION, start=start_time(), employee=ANNA))
            await d.post(b"{broken")  # a rejected body is journaled
            await d.client.post(f"{d.webhook}/extra", content=b"{}")
            await d.client.get(f"{d.webhook}?event=incoming_call&call_session_id=x")
            d.sims.crm.api_key = "rotated"  # every delivery now fails with retailCRM's refusal
            await d.play(scenarios.lost_in_ivr(SESSION + 1, start=start_time()))
            await d.sims.crm.wait_for(lambda: d.ctx.store.dead_letters())
            outputs = [(await d.client.get(d.url + path, headers=d.page_headers())).text
                       for path in ("/", f"/calls/{SESSION}", f"/calls/{SESSION}?format=json",
                                    "/healthz", "/metrics")]
            dump = "\n".join(d.ctx.store.conn.iterdump())
            daemon_url = d.url
    # Everything logged but the test's own HTTP clients calling the daemon (and the simulators).
    assert all(len(text) > 100 for text in outputs)  # pages rendered, not a login redirect
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records
                       if not r.name.startswith("tracker.simulators")
                       and daemon_url not in r.getMessage())
    assert "access_token_invalid" in dump and "apiKey" in dump  # the failures were recorded
    for secret in secrets:
        assert secret not in logged
        assert secret not in dump
        for text in outputs:
            assert secret not in text


# -- files -------------------------------------------------------------------------------------


async def test_database_and_its_side_files_are_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        with trio.fail_after(20):
            async with open_system(tmp_path) as d:
                await d.play(scenarios.lost_in_ivr(SESSION, start=start_time()))
                db = d.settings.database.path
                files = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
                assert all(f.exists() for f in files)
                assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {"0o600"}
    finally:
        os.umask(old)


async def test_a_database_readable_by_others_is_made_owner_only_at_start(tmp_path):
    db = tmp_path / "tracker.db"
    Store(db).close()
    db.chmod(0o644)
    with trio.fail_after(20):
        async with open_system(tmp_path):
            assert stat.S_IMODE(db.stat().st_mode) == 0o600


@pytest.mark.parametrize(("damage", "words"), [
    ("index", "missing from index"),
    ("garbage", "not a database"),
])
async def test_a_damaged_database_is_refused_at_start_with_the_reason(tmp_path, damage, words):
    db = tmp_path / "tracker.db"
    if damage == "index":
        corrupt_an_index(db)
        with sqlite3.connect(db) as conn:  # the reason for integrity_check over quick_check
            assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        conn.close()
    else:
        db.write_bytes(b"this is not SQLite " * 300)
    config = write_config(tmp_path / "t.toml", db=db, uis_url="http://127.0.0.1:9",
                          crm_url="http://127.0.0.1:9", port=free_port())
    with trio.fail_after(30):
        done = await run_cli("serve", "--config", str(config))
    stderr = done.stderr.decode()
    assert done.returncode == 3, stderr
    assert str(db) in stderr and words in stderr
    if damage == "index":
        assert "integrity check failed, refusing to start" in stderr and "backup" in stderr


# -- backup ------------------------------------------------------------------------------------


async def test_backup_of_a_busy_daemon_is_a_consistent_owner_only_copy(tmp_path):
    target = tmp_path / "copies" / "tracker-backup.db"
    target.parent.mkdir()
    with trio.fail_after(40):
        async with open_system(tmp_path) as d:
            config = write_config(tmp_path / "t.toml", db=d.settings.database.path,
                                  uis_url=d.sims.uis_url, crm_url=d.sims.crm_url)
            playing, done_copying = trio.Event(), trio.Event()

            async def traffic() -> None:
                for i in range(400):
                    if done_copying.is_set():
                        return
                    await d.play(scenarios.lost_in_ivr(SESSION + i, start=start_time()),
                                 settle=False)
                    playing.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(traffic)
                await playing.wait()
                done = await run_cli("backup", str(target), "--config", str(config))
                done_copying.set()
            assert done.returncode == 0, done.stderr.decode()
            assert "backed up" in done.stdout.decode()
            again = await run_cli("backup", str(target), "--config", str(config))
            assert again.returncode == 3 and "exists already" in again.stderr.decode()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no -wal, no .partial
    with sqlite3.connect(target) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        calls = copy.execute("SELECT count(*) FROM calls").fetchone()[0]
        assert calls >= 1
        # a snapshot: no action without its call, no accepted notification without its call
        assert copy.execute("SELECT count(*) FROM outbox WHERE call_id NOT IN"
                            " (SELECT id FROM calls)").fetchone()[0] == 0
        assert copy.execute("SELECT count(*) FROM events WHERE outcome = 'accepted' AND"
                            " call_id NOT IN (SELECT id FROM calls)").fetchone()[0] == 0
    copy.close()


# -- retention ---------------------------------------------------------------------------------

DAY = 86400.0
NOW = 1_700_000_000.0


def _call(store: Store, call_id: int, state: str, *, age_days: float, outbox: list[str]) -> None:
    at = NOW - age_days * DAY
    store.save_call(Call(id=call_id, state=state, updated_at=at, started_at=at))
    for i in range(3):
        store.journal(received_at=at, call_id=call_id, event="x", outcome="accepted",
                      dedupe_key=f"{call_id}-{i}", method="POST", body="{}")
    for status in outbox:
        row_id = store.enqueue(call_id, "upload", 1, {"result": "no answer"}, at)
        if status != "pending":
            store.finish_outbox(row_id, status, at)


@pytest.mark.parametrize(("state", "age_days", "outbox", "pruned"), [
    ("lost", 40, ["delivered"], True),
    ("ended", 40, ["dropped", "delivered"], True),
    ("lost", 40, ["pending"], False),   # still being delivered
    ("lost", 40, ["dead"], False),      # the operator must see why
    ("ringing", 40, [], False),         # not over (the sweeper's business)
    ("lost", 10, ["delivered"], False),  # younger than the retention
])
def test_retention_deletes_only_old_journal_rows_of_settled_calls(tmp_path, state, age_days,
                                                                  outbox, pruned):
    store = Store(tmp_path / "t.db")
    store.migrate()
    _call(store, 1, state, age_days=age_days, outbox=outbox)
    _call(store, 2, "lost", age_days=1, outbox=["delivered"])  # always kept
    store.journal(received_at=NOW - 40 * DAY, outcome="rejected", error="bad", method="POST",
                  body="{")
    store.journal(received_at=NOW - 1 * DAY, outcome="rejected", error="bad", method="POST",
                  body="{")
    deleted = maintenance.prune(store, RetentionSettings(journal_days=30, batch_rows=2), now=NOW)
    events_left = len(store.events_for(1))
    outbox_left = len(store.outbox_for(1))
    assert (events_left, outbox_left) == ((0, 0) if pruned else (3, len(outbox)))
    assert deleted == (3 + len(outbox) if pruned else 0) + 1  # + the old rejected row
    assert store.call_row(1) is not None  # call rows stay
    assert len(store.events_for(2)) == 3 and len(store.outbox_for(2)) == 1
    assert store.conn.execute("SELECT count(*) FROM events WHERE call_id IS NULL"
                              ).fetchone()[0] == 1
    assert maintenance.prune(store, RetentionSettings(journal_days=0), now=NOW + 999 * DAY) == 0
    store.close()


async def test_the_daemon_prunes_the_journal_periodically_and_a_late_repeat_does_nothing(tmp_path):
    with trio.fail_after(30):
        async with open_system(tmp_path, retention={"journal_days": 1e-5,
                                                    "interval_seconds": 1}) as d:
            scenario = scenarios.ring_group_lost(SESSION, start=start_time(), ringing=[ANNA])
            await d.play(scenario)
            sent = len(d.sims.crm.requests)
            assert d.count("events", "call_id = ?", SESSION) == len(scenario.notifications)
            await d.sims.crm.wait_for(
                lambda: d.count("events", "call_id = ?", SESSION) == 0, timeout=10)
            assert d.count("outbox", "call_id = ?", SESSION) == 0
            assert d.ctx.store.call_row(SESSION)["state"] == "lost"
            for notification in scenario.notifications:  # UIS repeats them all, much later
                response = await d.sims.uis.send_notification(notification, d.webhook, d.client)
                assert response.status_code == 200
            await d.settle()
            assert len(d.sims.crm.requests) == sent
            assert d.count("outbox", "call_id = ?", SESSION) == 0


# -- dead letters from the command line --------------------------------------------------------


async def test_dead_letters_are_listed_and_retried_from_the_command_line_once(tmp_path):
    first, second = SESSION, SESSION + 1
    with trio.fail_after(60):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            config = write_config(tmp_path / "t.toml", db=settings.database.path,
                                  uis_url=sims.uis_url, crm_url=sims.crm_url)
            async with open_daemon(sims, settings) as d:
                sims.crm.api_key = "rotated"  # retailCRM refuses the key: dead letters
                for session in (first, second):
                    await d.play(scenarios.lost_in_ivr(session, start=start_time()))
                dead = {r["call_id"]: r["id"] for r in d.ctx.store.dead_letters()}
                assert set(dead) == {first, second}
                sims.crm.api_key = CRM_KEY  # the operator fixed it in retailCRM

                listed = await run_cli("outbox", "list", "--config", str(config))
                assert listed.returncode == 0
                lines = listed.stdout.decode().splitlines()
                assert {int(line.split()[0]) for line in lines[1:]} == set(dead.values())
                assert 'Wrong "apiKey" value' in listed.stdout.decode()

                retried = await run_cli("outbox", "retry", str(dead[first]), "--config",
                                        str(config))
                assert retried.returncode == 0, retried.stderr.decode()
                assert f"#{dead[first]}" in retried.stdout.decode()
                # nobody woke the daemon: its dispatcher looks at the database by itself
                await sims.crm.wait_for(lambda: sims.crm.uploaded.get(str(first)),
                                        timeout=EXTERNAL_CHECK_SECONDS + 3)
                await d.settle()
                again = await run_cli("outbox", "retry", str(dead[first]), "999999", "--config",
                                      str(config))
                assert again.returncode == 1
                assert "is delivered, not a dead letter" in again.stderr.decode()
                assert "#999999 is unknown" in again.stderr.decode()

                everything = await run_cli("outbox", "retry", "--all", "--config", str(config))
                assert everything.returncode == 0
                await sims.crm.wait_for(lambda: sims.crm.uploaded.get(str(second)),
                                        timeout=EXTERNAL_CHECK_SECONDS + 3)
                await d.settle()
                assert d.ctx.store.dead_letters() == []
                nothing = await run_cli("outbox", "list", "--config", str(config))
                assert nothing.stdout.decode().strip() == "no dead letters"
            accepted = [item["externalId"] for r in sims.crm.requests
                        if r.endpoint == "telephony/calls/upload" and r.status == 200
                        for item in r.data["calls"]]
            assert sorted(accepted) == sorted([str(first), str(second)])  # each exactly once


async def test_outbox_commands_refuse_a_missing_database(tmp_path):
    config = write_config(tmp_path / "t.toml", db=tmp_path / "none.db",
                          uis_url="http://127.0.0.1:9", crm_url="http://127.0.0.1:9")
    with trio.fail_after(20):
        done = await run_cli("outbox", "list", "--config", str(config))
    assert done.returncode == 3 and "no database" in done.stderr.decode()
    assert not (tmp_path / "none.db").exists()

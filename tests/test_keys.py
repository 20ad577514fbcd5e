"""API keys: created once, stored as a hash, rights checked, revoked at once; the CLI; systemd."""

from __future__ import annotations

import configparser
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from tests.support import open_daemon, open_sims, settings_for
from tracker.cli import main as cli
from tracker.db import keys
from tracker.db.store import Store
from tracker.errors import KeyProblem

CONFIG = """\
[server]
public_url = "http://tracker.test"
[database]
path = "{db}"
[uis]
webhook_secret = "test-webhook-secret-0123456789"
access_token = "uis-token"
[crm]
url = "http://crm.test"
api_key = "crm-key"
client_id = "client-id-0123456789"
"""


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path / "keys.db")
    store.migrate()
    return store


def test_a_key_is_stored_only_as_its_hash(store: Store, tmp_path: Path) -> None:
    info, token = keys.create(store, "grafana", ["calls:read"])
    assert token.startswith("trk_") and len(token) >= 40
    row = dict(store.conn.execute("SELECT * FROM api_keys").fetchone())
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(row) and token not in repr(info)
    store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for path in tmp_path.iterdir():
        assert token.encode() not in path.read_bytes(), path
    assert keys.create(store, "other", ["admin"])[1] != token


@pytest.mark.parametrize(("granted", "right", "allowed"), [
    ({"calls:read"}, "calls:read", True),
    ({"calls:read"}, "log:read", False),
    ({"calls:read"}, "admin", False),
    ({"log:read", "outbox:write"}, "outbox:write", True),
    ({"log:read", "outbox:write"}, "employees:write", False),
    ({"admin"}, "calls:read", True),
    ({"admin"}, "outbox:write", True),
    ({"admin"}, "employees:write", True),
    ({"admin"}, "log:read", True),
])
def test_authorize_checks_the_right(store: Store, granted: set[str], right: str,
                                    allowed: bool) -> None:
    _, token = keys.create(store, "k", granted)
    found = keys.authorize(store, token, right)
    assert (found is not None) == allowed
    if found is not None:
        assert found.name == "k" and found.rights == frozenset(granted)


def test_wrong_missing_and_revoked_tokens_are_refused(store: Store) -> None:
    _, token = keys.create(store, "k", ["admin"])
    for wrong in (None, "", token[:-1], token + "x", token.upper(), "trk_", "x" * 5000,
                  token.removeprefix("trk_")):
        assert keys.authorize(store, wrong, "calls:read") is None, wrong
    keys.revoke(store, "k")
    assert keys.authorize(store, token, "calls:read") is None
    found = keys.find(store, token)
    assert found is not None and not found.active and not found.allows("calls:read")


def test_last_use_is_noted_at_most_once_a_minute(store: Store) -> None:
    info, token = keys.create(store, "k", ["admin"], now=1000.0)
    assert keys.find(store, token, now=2000.0) is not None
    assert keys.find(store, token, now=2030.0) is not None
    assert keys.all_keys(store)[0].last_used_at == 2000.0
    keys.find(store, token, now=2061.0)
    assert keys.all_keys(store)[0].last_used_at == 2061.0


@pytest.mark.parametrize(("name", "rights", "words"), [
    ("", "calls:read", "key name"),
    ("x" * 65, "calls:read", "key name"),
    ("-dash", "calls:read", "key name"),
    ("bad\nname", "calls:read", "key name"),
    ("ok", "", "at least one right"),
    ("ok", "calls:read,root", "unknown right(s) root"),
    ("ok", "calls:write", "unknown right(s) calls:write"),
])
def test_bad_names_and_rights_are_refused(store: Store, name: str, rights: str,
                                          words: str) -> None:
    with pytest.raises(KeyProblem) as caught:
        keys.create(store, name, rights)
    assert words in str(caught.value)
    assert store.conn.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 0


def test_names_are_unique_among_active_keys(store: Store) -> None:
    keys.create(store, "grafana", ["calls:read"])
    with pytest.raises(KeyProblem, match="exists"):
        keys.create(store, "grafana", ["admin"])
    keys.revoke(store, "grafana")
    keys.create(store, "grafana", ["admin"])  # a revoked name can be reused
    with pytest.raises(KeyProblem, match="no active key"):
        keys.revoke(store, "nobody")


@pytest.mark.parametrize(("allow", "addr", "expected"), [
    (True, "127.0.0.1", True), (True, "127.8.9.10", True), (True, "::1", True),
    (True, "10.0.0.1", False), (True, "192.168.1.5", False), (True, "::ffff:8.8.8.8", False),
    (True, None, False), (True, "", False), (True, "not an address", False),
    (False, "127.0.0.1", False), (False, "::1", False),
])
def test_loopback_access_needs_the_setting_and_a_loopback_peer(allow: bool, addr: str | None,
                                                              expected: bool) -> None:
    assert keys.loopback_allowed(allow, addr) is expected


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer trk_abc", "trk_abc"), ("bearer  trk_abc ", "trk_abc"), ("Basic trk_abc", None),
    ("Bearer", None), ("", None), (None, None), ("trk_abc", None),
])
def test_bearer_header(header: str | None, token: str | None) -> None:
    assert keys.bearer(header) == token


# -- the CLI -------------------------------------------------------------------------------------


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "tracker.toml"
    path.write_text(CONFIG.format(db=tmp_path / "cli.db"), encoding="utf-8")
    return path


def test_cli_creates_lists_and_revokes_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:
    config = str(write_config(tmp_path))
    assert cli.main(["keys", "create", "--name", "grafana", "--rights", "calls:read, log:read",
                     "--config", config]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("trk_") and "\n" not in token  # stdout is the key alone
    assert "grafana" in err and "only now" in err
    assert cli.main(["keys", "create", "--name", "grafana", "--rights", "admin",
                     "--config", config]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main(["keys", "create", "--name", "x", "--rights", "god", "--config", config]) == 1
    assert "unknown right(s) god" in capsys.readouterr().err
    assert cli.main(["keys", "list", "--config", config]) == 0
    listing = capsys.readouterr().out
    assert "grafana" in listing and "calls:read,log:read" in listing and "active" in listing
    assert token not in listing and token[4:12] not in listing
    assert cli.main(["keys", "revoke", "grafana", "--config", config]) == 0
    assert "revoked key 'grafana'" in capsys.readouterr().out
    assert cli.main(["keys", "revoke", "grafana", "--config", config]) == 1
    assert "no active key" in capsys.readouterr().err
    cli.main(["keys", "list", "--config", config])
    assert "revoked" in capsys.readouterr().out
    store = Store(tmp_path / "cli.db")
    assert keys.authorize(store, token, "calls:read") is None


async def test_a_cli_key_works_on_the_wire_and_revoking_it_takes_effect_at_once(tmp_path):
    with trio.fail_after(30):
        async with open_sims() as sims:
            settings = settings_for(tmp_path, sims.uis_url, sims.crm_url)
            config = tmp_path / "tracker.toml"
            config.write_text(CONFIG.format(db=settings.database.path), encoding="utf-8")
            async with open_daemon(sims, settings) as d:
                token = await trio.to_thread.run_sync(_cli_create, str(config))
                body = {"jsonrpc": "2.0", "id": 1, "method": "get.statistics",
                        "params": {"access_token": token}}
                answer = (await d.client.post(f"{d.url}/api/v1", json=body)).json()
                assert "result" in answer
                assert cli.main(["keys", "revoke", "ops", "--config", str(config)]) == 0
                answer = (await d.client.post(f"{d.url}/api/v1", json=body)).json()
                assert answer["error"]["data"]["mnemonic"] == "access_token_blocked"


def _cli_create(config: str) -> str:
    """The real command in a child process (it opens its own connection to the database)."""
    result = subprocess.run(
        [sys.executable, "run.py", "keys", "create", "--name", "ops", "--rights", "calls:read",
         "--config", config], capture_output=True, text=True, timeout=30,
        cwd=Path(__file__).resolve().parent.parent, check=True)
    return result.stdout.strip()


# -- systemd -------------------------------------------------------------------------------------


def test_systemd_unit_runs_serve_with_this_python_and_the_config(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["systemd-unit", "--config", "/etc/tracker/tracker.toml", "--user", "trk"]) == 0
    text = capsys.readouterr().out
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(text)
    assert unit.sections() == ["Unit", "Service", "Install"]
    service = unit["Service"]
    assert service["ExecStart"] == (f"{sys.executable} -m tracker serve --config "
                                    "/etc/tracker/tracker.toml")
    assert (service["User"], service["StateDirectory"], service["ReadWritePaths"]) == (
        "trk", "tracker", "/var/lib/tracker")
    assert service["RestartPreventExitStatus"] == "2 3"  # a bad config is not retried forever
    assert service["KillSignal"] == "SIGTERM"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert cli.main(["systemd-unit", "--state-dir", "/tmp/x"]) == 2
    # systemd-analyze verify and security: tests/test_systemd.py

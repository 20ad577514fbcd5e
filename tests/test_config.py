"""Configuration: one typed frozen Settings, every problem reported at once, secrets never shown."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracker import config
from tracker.config import Employee, Secret, Settings
from tracker.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent

SECRETS = {
    "webhook_secret": "wh-secret-0123456789abcdef",
    "access_token": "uis-token-s3cr3t-7f1e",
    "api_key": "crm-key-s3cr3t-91ad",
    "client_id": "crm-client-s3cr3t-c0de",
}

VALID_TOML = f"""
[server]
listen = "127.0.0.1:8080"
public_url = "https://tracker.example.com"
max_body_bytes = 131072

[database]
path = "data/tracker.db"
synchronous = "full"

[uis]
webhook_secret = "{SECRETS['webhook_secret']}"
access_token = "{SECRETS['access_token']}"
data_api_url = "https://dataapi.uiscom.ru/v2.0"
call_api_url = "https://callapi.uiscom.ru/v4.0"
media_url = "https://app.uiscom.ru/system/media/talk"
virtual_phone_number = "74950000000"
record_wait_seconds = 120
timeout_seconds = 7.5

[crm]
url = "https://example.retailcrm.ru"
api_key = "{SECRETS['api_key']}"
api_version = "v4"
code = "uis-tracker"
client_id = "{SECRETS['client_id']}"
timezone = "Europe/Berlin"
site = "main-shop"
phone_region = "RU"
timeout_seconds = 5

[outbox]
workers = 2
retry_base_seconds = 0.5
retry_max_seconds = 60

[log]
level = "DEBUG"
format = "json"

[[employees]]
uis_id = 13421
crm_user_id = 27
code = "101"

[[employees]]
uis_id = 13422
crm_user_id = 28
code = "102"
"""

MINIMAL_TOML = f"""
[server]
public_url = "https://tracker.example.com"

[uis]
webhook_secret = "{SECRETS['webhook_secret']}"
access_token = "{SECRETS['access_token']}"

[crm]
url = "https://example.retailcrm.ru"
api_key = "{SECRETS['api_key']}"
client_id = "{SECRETS['client_id']}"
"""

BAD_SECRETS = {
    "webhook_secret": "shortwh",
    "access_token": "uis-token-BAD-s3cr3t-4411",
    "api_key": "crm-key-BAD-s3cr3t-8822",
    "client_id": "crm-client-BAD-s3cr3t-6633",
}

BAD_TOML = f"""
[server]
listen = "127.0.0.1"
public_url = "https://tracker.example.com"

[uis]
webhook_secret = "{BAD_SECRETS['webhook_secret']}"
access_token = "{BAD_SECRETS['access_token']}"

[crm]
api_key = "{BAD_SECRETS['api_key']}"
api_version = "v6"
client_id = "{BAD_SECRETS['client_id']}"
timezone = "Mars/Olympus_Mons"
colour = "blue"

[[employees]]
uis_id = 13421
crm_user_id = 27
code = "101"

[[employees]]
uis_id = 13421
crm_user_id = 28
code = "102"

[[employees]]
uis_id = 13423
crm_user_id = "twenty-nine"
code = "103"
"""

# Every problem BAD_TOML holds: (what it is, the key a reader must see, a word saying why).
BAD_PROBLEMS = [
    pytest.param("crm.url", "missing", id="missing-crm-url"),
    pytest.param("crm.timezone", "Mars/Olympus_Mons", id="bad-timezone"),
    pytest.param("uis.webhook_secret", "16 characters", id="short-webhook-secret"),
    pytest.param("crm.colour", "unknown key", id="unknown-key"),
    pytest.param("crm.api_version", "v6", id="bad-api-version"),
    pytest.param("employees[1].uis_id", "13421", id="duplicate-uis-id"),
    pytest.param("employees[2].crm_user_id", "integer", id="non-integer-crm-user-id"),
    pytest.param("server.listen", "host:port", id="listen-without-port"),
]


def write(tmp_path: Path, text: str, name: str = "tracker.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return config.load(write(tmp_path, VALID_TOML), {})


def bad_problems(tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, BAD_TOML), {})
    return info.value.problems


def test_full_config_loads_with_typed_values(settings: Settings) -> None:
    assert settings.server.listen == "127.0.0.1:8080"
    assert settings.server.public_url == "https://tracker.example.com"
    assert settings.server.max_body_bytes == 131072
    assert settings.database.path == Path("data/tracker.db")
    assert settings.database.synchronous == "FULL"
    assert settings.uis.webhook_secret.reveal() == SECRETS["webhook_secret"]
    assert settings.uis.access_token.reveal() == SECRETS["access_token"]
    assert settings.uis.virtual_phone_number == "74950000000"
    assert settings.uis.record_wait_seconds == 120.0
    assert settings.uis.timeout_seconds == 7.5
    assert settings.crm.url == "https://example.retailcrm.ru"
    assert settings.crm.api_key.reveal() == SECRETS["api_key"]
    assert settings.crm.client_id.reveal() == SECRETS["client_id"]
    assert settings.crm.api_version == "v4"
    assert settings.crm.timezone == "Europe/Berlin"
    assert settings.crm.site == "main-shop"
    assert settings.crm.timeout_seconds == 5.0
    assert settings.outbox.workers == 2
    assert settings.outbox.retry_base_seconds == 0.5
    assert settings.outbox.retry_max_seconds == 60.0
    assert settings.log.level == "DEBUG"
    assert settings.log.format == "json"
    assert settings.employees == (
        Employee(uis_id=13421, crm_user_id=27, code="101"),
        Employee(uis_id=13422, crm_user_id=28, code="102"),
    )


@pytest.mark.parametrize(
    ("section", "key", "kind"),
    [
        ("server", "max_body_bytes", int),
        ("database", "path", Path),
        ("uis", "webhook_secret", Secret),
        ("uis", "record_wait_seconds", float),  # written as the TOML integer 120
        ("uis", "timeout_seconds", float),
        ("crm", "api_key", Secret),
        ("crm", "client_id", Secret),
        ("crm", "timeout_seconds", float),  # written as the TOML integer 5
        ("outbox", "workers", int),
        ("outbox", "retry_max_seconds", float),
    ],
)
def test_values_have_their_declared_types(
    settings: Settings, section: str, key: str, kind: type
) -> None:
    assert isinstance(getattr(getattr(settings, section), key), kind)


def test_settings_are_frozen(settings: Settings) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.outbox.workers = 9  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.crm = settings.crm  # type: ignore[misc]


def test_employee_lookup_by_uis_id(settings: Settings) -> None:
    assert settings.employee_by_uis_id(13422) == Employee(uis_id=13422, crm_user_id=28, code="102")
    assert settings.employee_by_uis_id(99999) is None
    assert settings.employee_by_uis_id(None) is None


def test_minimal_config_gets_the_documented_defaults(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, MINIMAL_TOML), {})
    assert settings.server.listen == "127.0.0.1:8080"
    assert settings.database.path == Path("tracker.db")
    assert settings.uis.data_api_url == "https://dataapi.uiscom.ru/v2.0"
    assert settings.crm.api_version == "v5"
    assert settings.crm.timezone == "Europe/Moscow"
    assert settings.crm.phone_region == "RU"
    assert settings.outbox.workers == 4
    assert settings.employees == ()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    environ = {
        "TRACKER_CRM_API_KEY": "key-from-env-5521",
        "TRACKER_OUTBOX_WORKERS": "3",
        "TRACKER_EMPLOYEES": '[{"uis_id": 777, "crm_user_id": 7, "code": "107"},'
        ' {"uis_id": "778", "crm_user_id": 8, "code": 108}]',
        "TRACKER_CONFIG": "/somewhere/else.toml",
        "PATH": "/usr/bin",
    }
    settings = config.load(write(tmp_path, VALID_TOML), environ)
    assert settings.crm.api_key.reveal() == "key-from-env-5521"
    assert settings.outbox.workers == 3
    assert type(settings.outbox.workers) is int
    assert settings.employees == (
        Employee(uis_id=777, crm_user_id=7, code="107"),
        Employee(uis_id=778, crm_user_id=8, code="108"),
    )
    # What the environment did not name still comes from the file.
    assert settings.crm.client_id.reveal() == SECRETS["client_id"]
    assert settings.crm.timezone == "Europe/Berlin"


def test_environment_alone_is_a_whole_configuration() -> None:
    environ = {
        "TRACKER_SERVER_PUBLIC_URL": "https://tracker.example.com",
        "TRACKER_UIS_WEBHOOK_SECRET": SECRETS["webhook_secret"],
        "TRACKER_UIS_ACCESS_TOKEN": SECRETS["access_token"],
        "TRACKER_CRM_URL": "https://example.retailcrm.ru",
        "TRACKER_CRM_API_KEY": SECRETS["api_key"],
        "TRACKER_CRM_CLIENT_ID": SECRETS["client_id"],
        "TRACKER_UIS_RECORD_WAIT_SECONDS": "30",
    }
    settings = config.load(None, environ)
    assert settings.crm.url == "https://example.retailcrm.ru"
    assert settings.uis.record_wait_seconds == 30.0


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({"TRACKER_OUTBOX_WORKERS": "three"}, "outbox.workers"),
        ({"TRACKER_OUTBOX_WORKERS": "0"}, "outbox.workers"),
        ({"TRACKER_EMPLOYEES": "not json"}, "TRACKER_EMPLOYEES"),
        ({"TRACKER_EMPLOYEES": '{"uis_id": 1}'}, "employees"),
        ({"TRACKER_CRM_COLOUR": "blue"}, "TRACKER_CRM_COLOUR"),
        ({"TRACKER_CRM_API_VERSION": "v9"}, "crm.api_version"),
    ],
)
def test_bad_environment_override_is_reported(
    tmp_path: Path, environ: dict[str, str], fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, VALID_TOML), environ)
    assert any(fragment in problem for problem in info.value.problems), info.value.problems


@pytest.mark.parametrize(("key", "why"), BAD_PROBLEMS)
def test_every_problem_is_reported_at_once(tmp_path: Path, key: str, why: str) -> None:
    problems = bad_problems(tmp_path)
    assert any(p.startswith(key + ":") and why in p for p in problems), problems


def test_each_problem_is_reported_once_and_nothing_else(tmp_path: Path) -> None:
    assert len(bad_problems(tmp_path)) == len(BAD_PROBLEMS)


def test_problems_never_show_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, BAD_TOML), {})
    text = str(info.value) + repr(info.value) + "\n".join(info.value.problems)
    for secret in BAD_SECRETS.values():
        assert secret not in text


def test_secrets_never_print(settings: Settings) -> None:
    shown = [
        str(settings),
        repr(settings),
        f"{settings}",
        f"{settings!r}",
        str(settings.uis),
        repr(settings.crm),
        f"{settings.crm.api_key}",
        # How a log line (%-style, habit 10) would show them.
        "%s %r" % (settings.crm.client_id, settings.uis.access_token),  # noqa: UP031
    ]
    for text in shown:
        for secret in SECRETS.values():
            assert secret not in text
    assert "**********" in repr(settings.crm.api_key)


def test_secret_reveals_and_compares_by_value() -> None:
    assert Secret("abc").reveal() == "abc"
    assert Secret("abc") == Secret("abc")
    assert Secret("abc") != Secret("abd")
    assert Secret("abc") != "abc"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        config.load(missing, {})
    assert len(info.value.problems) == 1
    assert str(missing) in info.value.problems[0]
    assert "does not exist" in info.value.problems[0]


@pytest.mark.parametrize(
    "text",
    ['[server\nlisten = "x"', 'listen = "unterminated', "[crm]\nurl = https://x", b"\xff\xfe[crm]"],
    ids=["unclosed-table", "unterminated-string", "bare-value", "not-utf8"],
)
def test_invalid_toml_is_a_config_error(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "broken.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config.load(path, {})
    assert "not valid TOML" in info.value.problems[0]


def clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TRACKER_")}


def run_cli(*args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO_ROOT,
        env=clean_environ(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, time.monotonic() - started


def test_serve_with_a_bad_config_exits_2_naming_every_key_and_no_secret(tmp_path: Path) -> None:
    result, elapsed = run_cli("serve", "--config", str(write(tmp_path, BAD_TOML)))

    assert result.returncode == 2, result.stderr
    for param in BAD_PROBLEMS:
        key = param.values[0]
        assert f"{key}:" in result.stderr
    for secret in BAD_SECRETS.values():
        assert secret not in result.stderr
        assert secret not in result.stdout
    # Validation happens before anything binds or starts: the process is gone almost at once.
    assert elapsed < 30


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("serve", "--config", "/nonexistent/tracker.toml"), "does not exist"),
        (("serve",), "no configuration"),
        (("activate", "--config", "/nonexistent/tracker.toml"), "does not exist"),
    ],
    ids=["missing-file", "no-config", "activate-missing-file"],
)
def test_cli_without_a_usable_config_exits_2(args: tuple[str, ...], fragment: str) -> None:
    result, _ = run_cli(*args)
    assert result.returncode == 2
    assert fragment in result.stderr

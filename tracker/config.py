"""Typed settings, parsed once from a TOML mapping plus ``TRACKER_<SECTION>_<KEY>`` overrides.

Every problem is collected and reported together in one ``ConfigError``. Secrets are wrapped in
``Secret`` so that neither ``str`` nor ``repr`` nor a log line ever shows them.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from .errors import ConfigError


class Secret:
    """A string that never prints itself; ``reveal()`` is the only way to the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Employee:
    """One UIS employee and the retailCRM user who stands for them."""

    uis_id: int
    crm_user_id: int
    code: str


@dataclass(frozen=True)
class ServerSettings:
    listen: str
    public_url: str
    max_body_bytes: int


@dataclass(frozen=True)
class DatabaseSettings:
    path: Path
    synchronous: str


@dataclass(frozen=True)
class UisSettings:
    webhook_secret: Secret
    access_token: Secret
    data_api_url: str
    call_api_url: str
    media_url: str
    virtual_phone_number: str
    record_wait_seconds: float
    timeout_seconds: float


@dataclass(frozen=True)
class CrmSettings:
    url: str
    api_key: Secret
    api_version: str
    code: str
    client_id: Secret
    timezone: str
    site: str
    phone_region: str
    timeout_seconds: float


@dataclass(frozen=True)
class OutboxSettings:
    workers: int
    retry_base_seconds: float
    retry_max_seconds: float


@dataclass(frozen=True)
class LogSettings:
    level: str
    format: str


@dataclass(frozen=True)
class Settings:
    """The whole configuration, frozen."""

    server: ServerSettings
    database: DatabaseSettings
    uis: UisSettings
    crm: CrmSettings
    outbox: OutboxSettings
    log: LogSettings
    employees: tuple[Employee, ...] = field(default=())

    def employee_by_uis_id(self, uis_id: int | None) -> Employee | None:
        """The mapping for a UIS employee id, or None when it is not mapped."""
        if uis_id is None:
            return None
        for employee in self.employees:
            if employee.uis_id == uis_id:
                return employee
        return None


_REQUIRED = object()

# (section, key) -> (type, default). The README's configuration table is checked against this.
SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "server": {
        "listen": (str, "127.0.0.1:8080"),
        "public_url": (str, _REQUIRED),
        "max_body_bytes": (int, 65536),
    },
    "database": {
        "path": (str, "tracker.db"),
        "synchronous": (str, "NORMAL"),
    },
    "uis": {
        "webhook_secret": (Secret, _REQUIRED),
        "access_token": (Secret, _REQUIRED),
        "data_api_url": (str, "https://dataapi.uiscom.ru/v2.0"),
        "call_api_url": (str, "https://callapi.uiscom.ru/v4.0"),
        "media_url": (str, "https://app.uiscom.ru/system/media/talk"),
        "virtual_phone_number": (str, ""),
        "record_wait_seconds": (float, 300.0),
        "timeout_seconds": (float, 10.0),
    },
    "crm": {
        "url": (str, _REQUIRED),
        "api_key": (Secret, _REQUIRED),
        "api_version": (str, "v5"),
        "code": (str, "uis-tracker"),
        "client_id": (Secret, _REQUIRED),
        "timezone": (str, "Europe/Moscow"),
        "site": (str, ""),
        "phone_region": (str, "RU"),
        "timeout_seconds": (float, 10.0),
    },
    "outbox": {
        "workers": (int, 4),
        "retry_base_seconds": (float, 1.0),
        "retry_max_seconds": (float, 300.0),
    },
    "log": {
        "level": (str, "INFO"),
        "format": (str, "text"),
    },
}


def load(path: str | Path | None, environ: Mapping[str, str]) -> Settings:
    """Read the TOML file at ``path`` (may be None), apply environment overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError([f"config file {path} does not exist"]) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"config file {path} is not valid TOML: {exc}"]) from exc
    return parse(data, environ)


def parse(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate a settings mapping (TOML-shaped) plus environment overrides; list every problem."""
    problems: list[str] = []
    merged = {section: dict(data.get(section) or {}) for section in SCHEMA}
    employees_raw: Any = data.get("employees", [])
    for section in data:
        if section not in SCHEMA and section != "employees":
            problems.append(f"[{section}]: unknown section")
    for section, values in merged.items():
        if not isinstance(data.get(section, {}), dict):
            problems.append(f"[{section}]: must be a table")
            merged[section] = {}
            continue
        for key in values:
            if key not in SCHEMA[section]:
                problems.append(f"{section}.{key}: unknown key")

    for name, value in (environ or {}).items():
        if not name.startswith("TRACKER_") or name == "TRACKER_CONFIG":
            continue
        if name == "TRACKER_EMPLOYEES":
            try:
                employees_raw = json.loads(value)
            except ValueError:
                problems.append("TRACKER_EMPLOYEES: must be a JSON array of tables")
            continue
        rest = name[len("TRACKER_") :].lower()
        section, _, key = rest.partition("_")
        if section not in SCHEMA or key not in SCHEMA[section]:
            problems.append(f"{name}: no such setting")
            continue
        merged[section][key] = value

    values: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        values[section] = {}
        for key, (kind, default) in keys.items():
            raw = merged[section].get(key, default)
            if raw is _REQUIRED or raw == "":
                if default is _REQUIRED:
                    problems.append(f"{section}.{key}: missing (required)")
                    values[section][key] = None
                    continue
                raw = default
            values[section][key] = _coerce(f"{section}.{key}", kind, raw, problems)

    employees = _employees(employees_raw, problems)
    _check(values, employees, problems)
    if problems:
        raise ConfigError(problems)
    return Settings(
        server=ServerSettings(**values["server"]),
        database=DatabaseSettings(
            path=Path(values["database"]["path"]),
            synchronous=values["database"]["synchronous"].upper(),
        ),
        uis=UisSettings(**values["uis"]),
        crm=CrmSettings(**values["crm"]),
        outbox=OutboxSettings(**values["outbox"]),
        log=LogSettings(**values["log"]),
        employees=tuple(employees),
    )


def _coerce(name: str, kind: type, raw: Any, problems: list[str]) -> Any:
    if kind is Secret:
        if isinstance(raw, Secret):
            return raw
        if not isinstance(raw, str):
            problems.append(f"{name}: must be a string")
            return None
        return Secret(raw)
    if kind is str:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return str(raw)
        if not isinstance(raw, str):
            problems.append(f"{name}: must be a string")
            return None
        return raw
    if isinstance(raw, bool):
        problems.append(f"{name}: must be a number, got {raw!r}")
        return None
    try:
        number = kind(raw)
    except (TypeError, ValueError):
        problems.append(f"{name}: must be a number, got {raw!r}")
        return None
    if number < 0:
        problems.append(f"{name}: must not be negative")
    return number


def _employees(raw: Any, problems: list[str]) -> list[Employee]:
    if not isinstance(raw, list):
        problems.append("employees: must be an array of tables ([[employees]])")
        return []
    result: list[Employee] = []
    seen_uis: set[int] = set()
    seen_codes: set[str] = set()
    for index, item in enumerate(raw):
        where = f"employees[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: must be a table with uis_id, crm_user_id, code")
            continue
        unknown = set(item) - {"uis_id", "crm_user_id", "code"}
        for key in sorted(unknown):
            problems.append(f"{where}.{key}: unknown key")
        ok = True
        for key in ("uis_id", "crm_user_id"):
            value = item.get(key)
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{where}.{key}: must be a positive integer")
                ok = False
            item = {**item, key: value}
        code = item.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            code = str(code)
        if not isinstance(code, str) or not code.strip():
            problems.append(f"{where}.code: must be a non-empty string")
            ok = False
        if not ok:
            continue
        if item["uis_id"] in seen_uis:
            problems.append(f"{where}.uis_id: {item['uis_id']} is mapped twice")
        if code in seen_codes:
            problems.append(f"{where}.code: {code!r} is used twice")
        seen_uis.add(item["uis_id"])
        seen_codes.add(code)
        result.append(Employee(uis_id=item["uis_id"], crm_user_id=item["crm_user_id"], code=code))
    return result


def _check(values: dict[str, dict[str, Any]], employees: list[Employee], problems: list[str]) -> None:
    listen = values["server"]["listen"]
    if isinstance(listen, str):
        host, sep, port = listen.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            problems.append(f"server.listen: must be host:port, got {listen!r}")
    for name in (
        ("server", "public_url"),
        ("uis", "data_api_url"),
        ("uis", "call_api_url"),
        ("uis", "media_url"),
        ("crm", "url"),
    ):
        url = values[name[0]][name[1]]
        if isinstance(url, str):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                problems.append(f"{name[0]}.{name[1]}: must be an http(s) URL, got {url!r}")
    secret = values["uis"]["webhook_secret"]
    if isinstance(secret, Secret) and len(secret.reveal()) < 16:
        problems.append("uis.webhook_secret: must be at least 16 characters")
    if isinstance(secret, Secret) and "/" in secret.reveal():
        problems.append("uis.webhook_secret: must not contain '/'")
    if values["crm"]["api_version"] not in (None, "v4", "v5"):
        problems.append(f"crm.api_version: must be 'v4' or 'v5', got {values['crm']['api_version']!r}")
    tz = values["crm"]["timezone"]
    if isinstance(tz, str):
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"crm.timezone: unknown time zone {tz!r}")
    region = values["crm"]["phone_region"]
    if isinstance(region, str) and region.upper() not in phonenumbers.SUPPORTED_REGIONS:
        problems.append(f"crm.phone_region: unknown region {region!r}")
    sync = values["database"]["synchronous"]
    if isinstance(sync, str) and sync.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        problems.append("database.synchronous: must be OFF, NORMAL, FULL or EXTRA")
    if values["outbox"]["workers"] is not None and not 1 <= values["outbox"]["workers"] <= 64:
        problems.append("outbox.workers: must be between 1 and 64")
    level = values["log"]["level"]
    if isinstance(level, str) and level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        problems.append("log.level: must be DEBUG, INFO, WARNING or ERROR")
    if values["log"]["format"] not in (None, "text", "json"):
        problems.append("log.format: must be 'text' or 'json'")
    if values["server"]["max_body_bytes"] is not None and values["server"]["max_body_bytes"] < 1024:
        problems.append("server.max_body_bytes: must be at least 1024")

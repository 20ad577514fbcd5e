"""Typed settings, parsed once from a TOML mapping plus ``TRACKER_<SECTION>_<KEY>`` overrides.

Every problem is collected and reported together in one ``ConfigError``. Secrets are wrapped in
``Secret`` so that neither ``str`` nor ``repr`` nor a log line ever shows them.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from tracker.errors import ConfigError


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
    phone: str = ""  # what UIS dials to reach them when routing (number or extension), optional


@dataclass(frozen=True)
class ServerSettings:
    listen: str
    public_url: str
    max_body_bytes: int
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-For is believed
    request_timeout_seconds: float = 30.0  # receive, handle and answer one request


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
    allowed_ips: tuple[str, ...] = ()  # CIDRs that may send notifications; empty: anyone


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
class ClickSettings:
    """Click-to-call (``/crm/make-call``) and outgoing calls."""

    dedupe_seconds: float = 5.0
    deadline_seconds: float = 5.0
    virtual_phone_numbers: str = ""  # more of our virtual numbers externalPhone may name
    busy_finish_reasons: str = "busy,contact_busy,subscriber_busy"

    def our_virtual_numbers(self) -> tuple[str, ...]:
        """The extra virtual numbers as digits (``uis.virtual_phone_number`` is not included)."""
        return tuple("".join(c for c in n if c.isdigit())
                     for n in _split(self.virtual_phone_numbers))

    def busy_reasons(self) -> frozenset[str]:
        """Lower-cased; empty (never ask UIS) for ``none``: an empty setting means the default."""
        reasons = frozenset(r.lower() for r in _split(self.busy_finish_reasons))
        return frozenset() if reasons == {"none"} else reasons


CRM_STATUSES = ("free", "busy", "dinner", "break")
UIS_STATES = ("available", "unavailable", "break", "do_not_disturb", "not_at_workplace",
              "not_at_work")
STATUS_SYNC_MODES = ("calls_available", "directions", "status_id")
DEFAULT_STATUS_MAPPING = "free=available,busy=unavailable,dinner=unavailable,break=unavailable"


@dataclass(frozen=True)
class StatusSyncSettings:
    """Employee status sync between retailCRM users and UIS employees."""

    mode: str = "calls_available"
    mapping: str = DEFAULT_STATUS_MAPPING
    poll_seconds: float = 0.0  # 0: UIS -> retailCRM sync is off

    def pairs(self) -> dict[str, str]:
        """retailCRM status -> UIS state for all four statuses (defaults fill the gaps)."""
        result = dict(_mapping_pairs(DEFAULT_STATUS_MAPPING))
        result.update(_mapping_pairs(self.mapping))
        return result


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _mapping_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for part in _split(text):
        crm_status, _, uis_state = part.partition("=")
        pairs.append((crm_status.strip().lower(), uis_state.strip().lower()))
    return pairs


@dataclass(frozen=True)
class RoutingSettings:
    """Responsible-manager routing (UIS interactive call processing, features/routing.py)."""

    enabled: bool = True
    deadline_seconds: float = 1.0
    cache_seconds: float = 60.0
    ignore_status: bool = False
    fallback_returned_code: int = 0
    fallback_phones: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdminSettings:
    """Admin API, request log and metrics (web/api.py, db/keys.py, metrics.py)."""

    allow_loopback_without_key: bool = False
    request_log_retention_days: float = 30.0
    default_limit: int = 100
    max_limit: int = 1000
    max_offset: int = 100_000
    metrics_require_key: bool = False


@dataclass(frozen=True)
class RateLimitSettings:
    """Request rates per upstream account and history-upload batching (core/ratelimit.py)."""

    crm_per_second: float = 10.0
    crm_telephony_per_second: float = 40.0
    uis_per_second: float = 5.0
    recovery_seconds: float = 30.0
    upload_batch_size: int = 50


@dataclass(frozen=True)
class RetentionSettings:
    """How long the notification journal is kept (db/maintenance.py)."""

    journal_days: float = 30.0  # 0 keeps it forever
    interval_seconds: float = 600.0
    batch_rows: int = 500


@dataclass(frozen=True)
class SweeperSettings:
    """The stale-call sweeper (features/sweeper.py)."""

    enabled: bool = True
    stale_after_seconds: float = 600.0
    interval_seconds: float = 60.0
    max_attempts: int = 5


@dataclass(frozen=True)
class ReconcileSettings:
    """Reconciliation with the Data API report, and backfill (features/reconcile.py)."""

    enabled: bool = True
    interval_seconds: float = 600.0
    start_delay_seconds: float = 60.0
    lookback_hours: float = 3.0
    grace_seconds: float = 300.0
    page_size: int = 1000
    minute_reserve: int = 5
    day_reserve: int = 500
    retry_seconds: float = 30.0
    max_retries: int = 5


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
    click: ClickSettings = field(default=ClickSettings())
    status_sync: StatusSyncSettings = field(default=StatusSyncSettings())
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    sweeper: SweeperSettings = field(default_factory=SweeperSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)

    def employee_by_uis_id(self, uis_id: int | None) -> Employee | None:
        """The mapping for a UIS employee id, or None when it is not mapped."""
        if uis_id is None:
            return None
        for employee in self.employees:
            if employee.uis_id == uis_id:
                return employee
        return None


_REQUIRED = object()
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def dial_string(raw: str) -> str:
    """A number or extension as UIS dials it: ``+7 (900) 123-45-67`` -> ``79001234567``.

    Spaces, dashes, dots, parentheses and a leading ``+`` go; anything else is kept so that
    validation can name it.
    """
    text = raw.strip()
    text = text[1:] if text.startswith("+") else text
    return "".join(ch for ch in text if ch not in " -.()")


# (section, key) -> (type, default). The README's configuration table is checked against this.
SCHEMA: dict[str, dict[str, tuple[type, Any]]] = {
    "server": {
        "listen": (str, "127.0.0.1:8080"),
        "public_url": (str, _REQUIRED),
        "max_body_bytes": (int, 65536),
        "trusted_proxies": (list, ()),
        "request_timeout_seconds": (float, 30.0),
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
        "allowed_ips": (list, ()),
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
    "routing": {
        "enabled": (bool, True),
        "deadline_seconds": (float, 1.0),
        "cache_seconds": (float, 60.0),
        "ignore_status": (bool, False),
        "fallback_returned_code": (int, 0),
        "fallback_phones": (tuple, ()),
    },
    "admin": {
        "allow_loopback_without_key": (bool, False),
        "request_log_retention_days": (float, 30.0),
        "default_limit": (int, 100),
        "max_limit": (int, 1000),
        "max_offset": (int, 100_000),
        "metrics_require_key": (bool, False),
    },
    "click": {
        "dedupe_seconds": (float, 5.0),
        "deadline_seconds": (float, 5.0),
        "virtual_phone_numbers": (str, ""),
        "busy_finish_reasons": (str, "busy,contact_busy,subscriber_busy"),
    },
    "sweeper": {
        "enabled": (bool, True),
        "stale_after_seconds": (float, 600.0),
        "interval_seconds": (float, 60.0),
        "max_attempts": (int, 5),
    },
    "reconcile": {
        "enabled": (bool, True),
        "interval_seconds": (float, 600.0),
        "start_delay_seconds": (float, 60.0),
        "lookback_hours": (float, 3.0),
        "grace_seconds": (float, 300.0),
        "page_size": (int, 1000),
        "minute_reserve": (int, 5),
        "day_reserve": (int, 500),
        "retry_seconds": (float, 30.0),
        "max_retries": (int, 5),
    },
    "status_sync": {
        "mode": (str, "calls_available"),
        "mapping": (str, DEFAULT_STATUS_MAPPING),
        "poll_seconds": (float, 0.0),
    },
    "ratelimit": {
        "crm_per_second": (float, 10.0),
        "crm_telephony_per_second": (float, 40.0),
        "uis_per_second": (float, 5.0),
        "recovery_seconds": (float, 30.0),
        "upload_batch_size": (int, 50),
    },
    "retention": {
        "journal_days": (float, 30.0),
        "interval_seconds": (float, 600.0),
        "batch_rows": (int, 500),
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
        # A section name may contain "_" itself (status_sync): the longest matching one wins.
        section = max((s for s in SCHEMA if rest.startswith(s + "_")), key=len, default="")
        key = rest[len(section) + 1 :] if section else ""
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
        click=ClickSettings(**values["click"]),
        status_sync=StatusSyncSettings(**values["status_sync"]),
        routing=RoutingSettings(**values["routing"]),
        admin=AdminSettings(**values["admin"]),
        ratelimit=RateLimitSettings(**values["ratelimit"]),
        retention=RetentionSettings(**values["retention"]),
        sweeper=SweeperSettings(**values["sweeper"]),
        reconcile=ReconcileSettings(**values["reconcile"]),
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
    if kind is bool:
        if isinstance(raw, str) and raw.strip().lower() in _BOOLEANS:
            return _BOOLEANS[raw.strip().lower()]
        if not isinstance(raw, bool):
            problems.append(f"{name}: must be true or false, got {raw!r}")
            return None
        return raw
    if kind is list:  # addresses: a TOML array, or comma-separated text from the environment
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            problems.append(f"{name}: must be an array of strings")
            return None
        return tuple(item.strip() for item in items if item.strip())
    if kind is tuple:  # phone numbers: a TOML array, or comma-separated text from the environment
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str | int) and
                                                          not isinstance(i, bool) for i in items):
            problems.append(f"{name}: must be an array of phone numbers")
            return None
        return tuple(digits for i in items if (digits := dial_string(str(i))))
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
        unknown = set(item) - {"uis_id", "crm_user_id", "code", "phone"}
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
        phone = item.get("phone", "")
        if isinstance(phone, int) and not isinstance(phone, bool):
            phone = str(phone)
        phone = dial_string(phone) if isinstance(phone, str) else None
        if phone is None or not (phone == "" or (phone.isascii() and phone.isdigit())):
            problems.append(f"{where}.phone: must be a phone number or extension (digits)")
            ok = False
        if not ok:
            continue
        if item["uis_id"] in seen_uis:
            problems.append(f"{where}.uis_id: {item['uis_id']} is mapped twice")
        if code in seen_codes:
            problems.append(f"{where}.code: {code!r} is used twice")
        seen_uis.add(item["uis_id"])
        seen_codes.add(code)
        result.append(Employee(uis_id=item["uis_id"], crm_user_id=item["crm_user_id"], code=code,
                               phone=phone))
    return result


def _check(values: dict[str, dict[str, Any]], employees: list[Employee],
           problems: list[str]) -> None:
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
        problems.append("crm.api_version: must be 'v4' or 'v5', "
                        f"got {values['crm']['api_version']!r}")
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
    _check_click_and_status_sync(values, problems)
    _check_sweeper_and_reconcile(values, problems)
    _check_limits_and_access(values, problems)


def _check_click_and_status_sync(values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    click, sync = values["click"], values["status_sync"]
    if click["deadline_seconds"] is not None and not 0 < click["deadline_seconds"] <= 60:
        problems.append("click.deadline_seconds: must be more than 0 and at most 60")
    if isinstance(click["virtual_phone_numbers"], str):
        for number in _split(click["virtual_phone_numbers"]):
            if not any(c.isdigit() for c in number):
                problems.append(f"click.virtual_phone_numbers: {number!r} is not a phone number")
    if sync["mode"] not in (None, *STATUS_SYNC_MODES):
        problems.append(f"status_sync.mode: must be one of {', '.join(STATUS_SYNC_MODES)}, "
                        f"got {sync['mode']!r}")
    if isinstance(sync["mapping"], str):
        for part in _split(sync["mapping"]):
            crm_status, sep, uis_state = (p.strip().lower() for p in part.partition("="))
            if not sep or crm_status not in CRM_STATUSES or uis_state not in UIS_STATES:
                problems.append(
                    f"status_sync.mapping: {part!r} must be <{'|'.join(CRM_STATUSES)}>="
                    f"<{'|'.join(UIS_STATES)}>")
    if sync["poll_seconds"] and values["crm"]["api_version"] == "v4":
        problems.append("status_sync.poll_seconds: pushing statuses to retailCRM needs "
                        "crm.api_version v5 (users/{id}/status)")
    admin = values["admin"]
    if admin["max_limit"] is not None and not 1 <= admin["max_limit"] <= 10_000:
        problems.append("admin.max_limit: must be between 1 and 10000")
    if (admin["default_limit"] is not None and admin["max_limit"] is not None
            and not 1 <= admin["default_limit"] <= admin["max_limit"]):
        problems.append("admin.default_limit: must be between 1 and admin.max_limit")
    deadline = values["routing"]["deadline_seconds"]
    if deadline is not None and not 0.05 <= deadline <= 10:
        problems.append("routing.deadline_seconds: must be between 0.05 and 10")
    for phone in values["routing"]["fallback_phones"] or ():
        if not (phone.isascii() and phone.isdigit()):
            problems.append(f"routing.fallback_phones: {phone!r} is not a phone number (digits)")


def _check_limits_and_access(values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    for name in ("crm_per_second", "crm_telephony_per_second", "uis_per_second"):
        if values["ratelimit"][name] is not None and not values["ratelimit"][name] > 0:
            problems.append(f"ratelimit.{name}: must be more than 0")
    size = values["ratelimit"]["upload_batch_size"]
    if size is not None and not 1 <= size <= 50:
        problems.append("ratelimit.upload_batch_size: must be between 1 and 50 (retailCRM's limit)")
    retention = values["retention"]
    if retention["interval_seconds"] is not None and retention["interval_seconds"] < 1:
        problems.append("retention.interval_seconds: must be at least 1")
    if retention["batch_rows"] is not None and not 1 <= retention["batch_rows"] <= 10_000:
        problems.append("retention.batch_rows: must be between 1 and 10000")
    timeout = values["server"]["request_timeout_seconds"]
    if timeout is not None and not 0.1 <= timeout <= 3600:
        problems.append("server.request_timeout_seconds: must be between 0.1 and 3600")
    for section, key in (("uis", "allowed_ips"), ("server", "trusted_proxies")):
        for text in values[section][key] or ():
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                problems.append(f"{section}.{key}: {text!r} is not an IP address or CIDR network")


def _check_sweeper_and_reconcile(values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    sweeper, reconcile = values["sweeper"], values["reconcile"]
    for section, name in (("sweeper", "stale_after_seconds"), ("sweeper", "interval_seconds"),
                          ("reconcile", "interval_seconds"), ("reconcile", "lookback_hours")):
        if values[section][name] is not None and values[section][name] <= 0:
            problems.append(f"{section}.{name}: must be more than 0")
    if sweeper["max_attempts"] is not None and not 1 <= sweeper["max_attempts"] <= 100:
        problems.append("sweeper.max_attempts: must be between 1 and 100")
    if reconcile["page_size"] is not None and not 1 <= reconcile["page_size"] <= 10_000:
        problems.append("reconcile.page_size: must be between 1 and 10000 (the Data API's limit)")
    if reconcile["max_retries"] is not None and reconcile["max_retries"] > 100:
        problems.append("reconcile.max_retries: must be at most 100")

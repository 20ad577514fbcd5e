"""Parsing settings from a TOML mapping plus ``TRACKER_<SECTION>_<KEY>`` overrides.

The schema (sections, keys, kinds, defaults) is derived from the dataclasses in
``config.settings``; nothing here repeats a default. Every problem is collected and reported
together in one ``ConfigError``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import stat
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers

from tracker.config.settings import (
    CRM_STATUSES,
    PHONES,
    STATUS_SYNC_MODES,
    STRINGS,
    UI_LANGUAGES,
    UIS_STATES,
    Employee,
    Secret,
    Settings,
    dial_string,
    split_list,
)
from tracker.errors import ConfigError

_REQUIRED = object()
_BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_KINDS: dict[Any, Any] = {str: str, int: int, float: float, bool: bool, Secret: Secret, Path: str}


def _derive() -> tuple[dict[str, type], dict[str, dict[str, tuple[Any, Any]]]]:
    sections: dict[str, type] = {}
    schema: dict[str, dict[str, tuple[Any, Any]]] = {}
    hints = typing.get_type_hints(Settings)
    for top in dataclasses.fields(Settings):
        if top.name == "employees":
            continue
        cls = hints[top.name]
        sections[top.name] = cls
        cls_hints = typing.get_type_hints(cls)
        keys: dict[str, tuple[Any, Any]] = {}
        for f in dataclasses.fields(cls):
            kind = f.metadata.get("kind") or _KINDS[cls_hints[f.name]]
            if f.default is not dataclasses.MISSING:
                default: Any = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = _REQUIRED
            if isinstance(default, Path):
                default = str(default)
            keys[f.name] = (kind, default)
        schema[top.name] = keys
    return sections, schema


_SECTIONS, SCHEMA = _derive()
"""Section name -> its dataclass; (section, key) -> (kind, default). The README's
configuration table is checked against SCHEMA."""


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


def random_enough(secret: str) -> bool:
    """At least 16 characters, and not a short pattern repeated ("1", "aaaa…", "1212…"): at
    least 10 different characters, as a generated token has."""
    return len(secret) >= 16 and len(set(secret)) >= 10


def exposed_mode(path: str | Path) -> str | None:
    """A warning when the config file (it holds secrets) is readable by its group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO) & ~stat.S_IRGRP:
        return (f"config file {path} is mode {stat.S_IMODE(mode):04o}: others can read its "
                "secrets; make it 0640 (root:tracker) or 0600")
    return None


def parse(data: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Validate a settings mapping (TOML-shaped) plus environment overrides; list every problem."""
    problems: list[str] = []
    merged = {section: dict(data.get(section) or {}) for section in SCHEMA}
    employees_raw: Any = data.get("employees", [])
    for section in data:
        if section not in SCHEMA and section != "employees":
            problems.append(f"[{section}]: unknown section")
    for section, given in merged.items():
        if not isinstance(data.get(section, {}), dict):
            problems.append(f"[{section}]: must be a table")
            merged[section] = {}
            continue
        for key in given:
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
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        fields = dict(values[section])
        if section == "database":
            fields["path"] = Path(fields["path"])
            fields["synchronous"] = fields["synchronous"].upper()
        sections[section] = cls(**fields)
    return Settings(employees=tuple(employees), **sections)


def _coerce(name: str, kind: Any, raw: Any, problems: list[str]) -> Any:
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
    if kind == STRINGS:  # a TOML array, or comma-separated text from the environment
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            problems.append(f"{name}: must be an array of strings")
            return None
        return tuple(item.strip() for item in items if item.strip())
    if kind == PHONES:  # a TOML array, or comma-separated text from the environment
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
        given_code = item.get("code")
        if isinstance(given_code, int) and not isinstance(given_code, bool):
            given_code = str(given_code)
        code = given_code if isinstance(given_code, str) and given_code.strip() else ""
        if not code:
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
    client_id = values["crm"]["client_id"]
    if isinstance(client_id, Secret) and not random_enough(client_id.reveal()):
        problems.append("crm.client_id: must be at least 16 random characters (it alone opens "
                        "click-to-call); generate one: python -c 'import secrets; "
                        "print(secrets.token_urlsafe(24))'")
    failures = values["server"]["failures_per_minute"]
    if isinstance(failures, int | float) and failures < 0:
        problems.append("server.failures_per_minute: must be 0 (off) or more")
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
    _check_crm_work_and_page(values, problems)


def _check_click_and_status_sync(values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    click, sync = values["click"], values["status_sync"]
    if click["deadline_seconds"] is not None and not 0 < click["deadline_seconds"] <= 60:
        problems.append("click.deadline_seconds: must be more than 0 and at most 60")
    if isinstance(click["virtual_phone_numbers"], str):
        for number in split_list(click["virtual_phone_numbers"]):
            if not any(c.isdigit() for c in number):
                problems.append(f"click.virtual_phone_numbers: {number!r} is not a phone number")
    if sync["mode"] not in (None, *STATUS_SYNC_MODES):
        problems.append(f"status_sync.mode: must be one of {', '.join(STATUS_SYNC_MODES)}, "
                        f"got {sync['mode']!r}")
    if isinstance(sync["mapping"], str):
        for part in split_list(sync["mapping"]):
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


def _check_crm_work_and_page(values: dict[str, dict[str, Any]], problems: list[str]) -> None:
    minutes = values["tasks"]["callback_target_minutes"]
    if minutes is not None and not minutes > 0:
        problems.append("tasks.callback_target_minutes: must be more than 0")
    method = values["orders"]["method"]
    if isinstance(method, str) and not method.strip():
        problems.append("orders.method: must be a retailCRM order method code")
    poll = values["deals"]["poll_seconds"]
    if poll is not None and not 5 <= poll <= 86_400:
        problems.append("deals.poll_seconds: must be between 5 and 86400")
    won, lost = values["deals"]["won_status_groups"], values["deals"]["lost_status_groups"]
    if won is not None and lost is not None and set(won) & set(lost):
        problems.append("deals.won_status_groups and deals.lost_status_groups: "
                        f"{', '.join(sorted(set(won) & set(lost)))} cannot be both won and lost")
    language = values["ui"]["language"]
    if language is not None and language not in UI_LANGUAGES:
        problems.append(f"ui.language: must be one of {', '.join(UI_LANGUAGES)}, got {language!r}")

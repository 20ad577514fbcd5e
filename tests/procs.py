"""Helpers for tests that run tracker as a real process: a config file, a free port, health."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import trio

from tests.support import CLIENT_ID, CRM_KEY, CRM_WORK_OFF, MAPPING, SECRET, UIS_TOKEN

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def write_config(path: Path, *, db: Path, uis_url: str, crm_url: str, port: int = 0,
                 **sections: dict[str, Any]) -> Path:
    """A TOML config like ``tests.support.settings_for`` (fast retries, the three employees)."""
    data: dict[str, dict[str, Any]] = {
        "server": {"listen": f"127.0.0.1:{port}", "public_url": "http://tracker.test"},
        "database": {"path": str(db)},
        "uis": {"webhook_secret": SECRET, "access_token": UIS_TOKEN,
                "data_api_url": f"{uis_url}/dataapi/v2.0",
                "call_api_url": f"{uis_url}/callapi/v4.0",
                "media_url": "https://media.test/talk", "virtual_phone_number": "74950000000",
                "record_wait_seconds": 2, "timeout_seconds": 2},
        "crm": {"url": crm_url, "api_key": CRM_KEY, "client_id": CLIENT_ID, "timeout_seconds": 2},
        "outbox": {"retry_base_seconds": 0.05, "retry_max_seconds": 0.4},
        **{section: dict(values) for section, values in CRM_WORK_OFF.items()},
    }
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        lines.append("")
    for uis_id, (crm_user_id, code) in MAPPING.items():
        lines += ["[[employees]]", f"uis_id = {uis_id}", f"crm_user_id = {crm_user_id}",
                  f'code = "{code}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    path.chmod(0o600)  # it holds secrets: check and serve warn about a file others can read
    return path


async def wait_healthy(client: httpx.AsyncClient, url: str) -> None:
    """Poll ``/healthz`` until it answers 200 (bound it with ``trio.fail_after``)."""
    while True:
        try:
            if (await client.get(f"{url}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await trio.sleep(0.05)


async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``python run.py ARGS`` to completion, output captured."""
    return await trio.run_process([sys.executable, "run.py", *args], cwd=ROOT,
                                  capture_stdout=True, capture_stderr=True, check=False)

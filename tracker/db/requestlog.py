"""The request log (``api_requests``): rows written, secrets masked before, old rows pruned.

Rows are written with ``Store.log_request`` (``RequestLogRows``) by the admin API, the status
page and the retailCRM callbacks; read back with ``get.api_requests``. ``run_pruner`` keeps
``admin.request_log_retention_days``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import trio

from tracker.db.rows import Rows
from tracker.logs import MASK

log = logging.getLogger(__name__)

PRUNE_EVERY_SECONDS = 3600.0
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "client_id", "clientid")
_MAX_PARAMS_CHARS = 8192  # one row must not let a client fill the disk
MAX_VALUE_CHARS = 256  # a callback's parameter, as logged


def refused(size: int, address: str | None) -> dict[str, Any]:
    """What is kept of a refused request (wrong key or clientId): a fixed-size summary, never
    what it sent, so that a flood of them costs the log a few bytes each."""
    return {"_refused": True, "bytes": size, "from": (address or "?")[:64]}


def mask(params: Any) -> dict[str, Any]:
    """A copy of ``params`` fit for the log (the admin API's and the retailCRM callbacks'):
    values under secret-looking names (``access_token``,
    ``clientId``, ``api_key``, …, at any depth) become ``***``; oversized params are cut."""
    if not isinstance(params, dict):
        params = {"_params": params}
    masked: dict[str, Any] = _mask(params)
    text = json.dumps(masked, ensure_ascii=False, default=str)
    if len(text) > _MAX_PARAMS_CHARS:
        return {"_truncated": text[:_MAX_PARAMS_CHARS]}
    return masked


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if _secret(k) and v not in (None, "") else _mask(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def cap(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` cut at ``limit`` characters, saying how much was left out."""
    return text if len(text) <= limit else text[:limit] + f"…(+{len(text) - limit})"


def _secret(name: Any) -> bool:
    lowered = str(name).lower()
    return any(word in lowered for word in _SECRET_WORDS)


class RequestLogRows(Rows):
    """Queries of the ``api_requests`` table."""

    def log_request(self, *, source: str, method: str, params: dict[str, Any], outcome: str,
                    status: int, duration_ms: float, key_name: str | None = None,
                    at: float | None = None) -> None:
        """Append to the request log; ``params`` must already have its secrets masked."""
        self.conn.execute(
            "INSERT INTO api_requests (at, source, key_name, method, params, outcome, status,"
            " duration_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time() if at is None else at, source, key_name, method,
             json.dumps(params, ensure_ascii=False, default=str), outcome, status, duration_ms),
        )

    def prune_request_log(self, before: float) -> int:
        """Delete the rows logged before ``before``; return how many."""
        return self.conn.execute("DELETE FROM api_requests WHERE at < ?", (before,)).rowcount


def prune(store: RequestLogRows, retention_days: float, now: float | None = None) -> int:
    """Delete request-log rows older than the retention; return how many. 0 days keeps all."""
    if retention_days <= 0:
        return 0
    now = time.time() if now is None else now
    return store.prune_request_log(now - retention_days * 86400)


async def run_pruner(store: RequestLogRows, retention_days: float, *,
                     every_seconds: float = PRUNE_EVERY_SECONDS,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Prune now (before reporting started), then every ``every_seconds``, until cancelled."""
    started = False
    while True:
        removed = prune(store, retention_days)
        if removed:
            log.info("request log: pruned %d rows older than %g days", removed, retention_days)
        if not started:
            task_status.started()
            started = True
        await trio.sleep(every_seconds)

"""Log lines carry the call id and never a secret."""

from __future__ import annotations

import io
import json
import logging

import pytest

from tracker import logs


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _capture(fmt: str) -> tuple[logging.Logger, io.StringIO]:
    logs.configure("INFO", fmt)
    stream = io.StringIO()
    root = logging.getLogger()
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    return logging.getLogger("tracker.test"), stream


def test_known_secrets_are_masked_in_every_line() -> None:
    log, stream = _capture("text")
    logs.redact("webhook-secret-0123456789", "crm-api-key-value")
    try:
        log.error("POST /webhooks/uis/%s failed with key %s", "webhook-secret-0123456789",
                  "crm-api-key-value")
    finally:
        logs.redact()
    text = stream.getvalue()
    assert "webhook-secret-0123456789" not in text and "crm-api-key-value" not in text
    assert "/webhooks/uis/*** failed with key ***" in text


def test_json_lines_carry_the_call_id() -> None:
    log, stream = _capture("json")
    token = logs.call_id_var.set(998677427)
    try:
        log.info("popup delivered")
    finally:
        logs.call_id_var.reset(token)
    log.info("no call here")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["call_id"] == 998677427 and first["message"] == "popup delivered"
    assert second["call_id"] is None

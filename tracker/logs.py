"""Logging set-up for the entry point: text or JSON lines, the call id on every line."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

MASK = "***"  # what stands for a secret wherever one is hidden (log lines, the request log)

call_id_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("call_id", default=None)


@contextmanager
def about_call(call_id: int | None) -> Iterator[None]:
    """Tag every log line emitted inside the block with ``call_id``."""
    token = call_id_var.set(call_id)
    try:
        yield
    finally:
        call_id_var.reset(token)


class _CallIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = call_id_var.get()
        return True


class Redactor(logging.Filter):
    """Replaces known secret values in log messages by ``***`` (defence in depth: a library
    logging a URL or a header must not leak the webhook secret or an API key)."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            redacted = message
            for secret in self.secrets:
                redacted = redacted.replace(secret, MASK)
            if redacted != message:
                record.msg, record.args = redacted, ()
        return True


_REDACTOR = Redactor()


def redact(*secrets: str) -> None:
    """Mask these values in every log line from now on (called once the settings are read)."""
    _REDACTOR.secrets = tuple(sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "call_id": getattr(record, "call_id", None),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None)
        record.call_tag = f" [call {call_id}]" if call_id is not None else ""
        return super().format(record)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger once, at the entry point only."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_CallIdFilter())
    handler.addFilter(_REDACTOR)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(name)s%(call_tag)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    logging.getLogger("transitions").setLevel(logging.WARNING)

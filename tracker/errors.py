"""One error tree for tracker.

    TrackerError
    ├── ConfigError            the configuration is bad; lists every problem at once
    ├── StatechartError        a file in statecharts/ is invalid
    ├── BodyError              a request body that cannot be decoded (core/bodies.py)
    │   └── RejectedNotification   a webhook notification we cannot accept (answered 400)
    ├── StoreError             the database refused (integrity check, schema too new)
    ├── ApiError               an admin API request refused (JSON-RPC code + mnemonic)
    ├── KeyProblem             an API key cannot be created or revoked as asked
    └── DeliveryError          an upstream (retailCRM, UIS) call failed
        ├── RetryableDelivery  transport error, timeout, 5xx, 429, 503, UIS limit_exceeded
        └── PermanentDelivery  the upstream said no for good; kept as a dead letter

Library errors are wrapped at the boundary with ``raise ... from exc``; HTTP status codes are
chosen by the web layer only.
"""

from __future__ import annotations


class TrackerError(Exception):
    """Root of every error tracker raises on purpose."""


class ConfigError(TrackerError):
    """The configuration is invalid; ``problems`` names every bad or missing key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  - " + "\n  - ".join(problems))


class StatechartError(TrackerError):
    """A statechart definition failed validation."""


class BodyError(TrackerError):
    """A request body that cannot be decoded; ``field`` names the culprit key when known."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.message = message
        self.field = field
        super().__init__(message if field is None else f"{field}: {message}")


class RejectedNotification(BodyError):
    """A notification that cannot be accepted; ``field`` names the culprit when known."""


class StoreError(TrackerError):
    """The database cannot be used as it is."""


class ApiError(TrackerError):
    """An admin API refusal in the UIS Data API style: ``code`` is the JSON-RPC group,
    ``mnemonic`` the reason, ``field`` a dot path into the request, ``value`` what was given."""

    def __init__(self, code: int, mnemonic: str, message: str, *, field: str | None = None,
                 value: object = None) -> None:
        self.code = code
        self.mnemonic = mnemonic
        self.message = message
        self.field = field
        self.value = value
        super().__init__(f"{mnemonic}: {message}")


class KeyProblem(TrackerError):
    """An API key cannot be created or revoked as asked (bad name, unknown right, no such key)."""


class DeliveryError(TrackerError):
    """An upstream call failed; ``detail`` carries the upstream's own message when it had one."""

    # What the failed attempt sent, set by the client: a dead letter's timeline shows it.
    request: dict[str, object] | None = None

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        self.status = status
        self.detail = detail
        super().__init__(message)


class RetryableDelivery(DeliveryError):
    """Worth trying again later: transport failure, timeout, 5xx, 429, 503, rate budget."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str = "",
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message, status=status, detail=detail)
        self.retry_after_seconds = retry_after_seconds


class PermanentDelivery(DeliveryError):
    """The upstream refused for good (bad key, bad format, unknown entity)."""

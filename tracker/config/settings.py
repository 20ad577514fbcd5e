"""The typed, frozen settings: one dataclass per TOML section, each key's type and default once.

``config.parse`` derives its schema (which keys exist, their kinds and defaults) from these
classes, so a key is added by adding a field here. A field without a default is required.
Secrets are wrapped in ``Secret`` so that neither ``str`` nor ``repr`` nor a log line shows them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


# Field kinds that the annotation alone does not tell the parser (``tuple[str, ...]`` is both):
STRINGS = "strings"  # a TOML array of strings, or comma-separated text from the environment
PHONES = "phones"    # the same, each kept as the digits UIS dials


def strings(*default: str) -> Any:
    """A field holding a tuple of strings (addresses, names), empty unless ``default`` says."""
    return field(default=tuple(default), metadata={"kind": STRINGS})


def phones() -> Any:
    """A field holding a tuple of phone numbers or extensions as digits."""
    return field(default=(), metadata={"kind": PHONES})


@dataclass(frozen=True)
class Employee:
    """One UIS employee and the retailCRM user who stands for them."""

    uis_id: int
    crm_user_id: int
    code: str
    phone: str = ""  # what UIS dials to reach them when routing (number or extension), optional


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    listen: str = "127.0.0.1:8080"
    public_url: str
    max_body_bytes: int = 65536
    trusted_proxies: tuple[str, ...] = strings()  # CIDRs whose X-Forwarded-For is believed
    request_timeout_seconds: float = 30.0  # receive, handle and answer one request
    allowed_hosts: tuple[str, ...] = strings()  # Host names served besides listen / public_url
    # Failed keys, clientIds and logins one caller address may send per minute (then 429); 0: off
    failures_per_minute: float = 30.0


@dataclass(frozen=True)
class DatabaseSettings:
    path: Path = Path("tracker.db")
    synchronous: str = "NORMAL"


@dataclass(frozen=True, kw_only=True)
class UisSettings:
    webhook_secret: Secret
    access_token: Secret
    data_api_url: str = "https://dataapi.uiscom.ru/v2.0"
    call_api_url: str = "https://callapi.uiscom.ru/v4.0"
    media_url: str = "https://app.uiscom.ru/system/media/talk"
    virtual_phone_number: str = ""
    record_wait_seconds: float = 300.0
    timeout_seconds: float = 10.0
    allowed_ips: tuple[str, ...] = strings()  # CIDRs that may send notifications; empty: anyone


@dataclass(frozen=True, kw_only=True)
class CrmSettings:
    url: str
    api_key: Secret
    api_version: str = "v5"
    code: str = "uis-tracker"
    client_id: Secret
    timezone: str = "Europe/Moscow"
    site: str = ""
    phone_region: str = "RU"
    timeout_seconds: float = 10.0


@dataclass(frozen=True)
class OutboxSettings:
    workers: int = 4
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0


@dataclass(frozen=True)
class LogSettings:
    level: str = "INFO"
    format: str = "text"


def split_list(text: str) -> list[str]:
    """The non-empty, stripped parts of comma-separated text."""
    return [part.strip() for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class ClickSettings:
    """Click-to-call (``/crm/make-call``) and outgoing calls."""

    dedupe_seconds: float = 5.0
    deadline_seconds: float = 5.0
    virtual_phone_numbers: str = ""  # more of our virtual numbers externalPhone may name
    # get.calls_report's documented finish_reason for "the customer is busy" ("Абонент занят")
    busy_finish_reasons: str = "subscriber_busy"

    def our_virtual_numbers(self) -> tuple[str, ...]:
        """The extra virtual numbers as digits (``uis.virtual_phone_number`` is not included)."""
        return tuple("".join(c for c in n if c.isdigit())
                     for n in split_list(self.virtual_phone_numbers))

    def busy_reasons(self) -> frozenset[str]:
        """Lower-cased; empty (never ask UIS) for ``none``: an empty setting means the default."""
        reasons = frozenset(r.lower() for r in split_list(self.busy_finish_reasons))
        return frozenset() if reasons == {"none"} else reasons


CRM_STATUSES = ("free", "busy", "dinner", "break")
UIS_STATES = ("available", "unavailable", "break", "do_not_disturb", "not_at_workplace",
              "not_at_work")
STATUS_SYNC_MODES = ("calls_available", "directions", "status_id")
DEFAULT_STATUS_MAPPING = "free=available,busy=unavailable,dinner=unavailable,break=unavailable"


def mapping_pairs(text: str) -> list[tuple[str, str]]:
    """``a=b,c=d`` as lower-cased pairs."""
    pairs = []
    for part in split_list(text):
        crm_status, _, uis_state = part.partition("=")
        pairs.append((crm_status.strip().lower(), uis_state.strip().lower()))
    return pairs


@dataclass(frozen=True)
class StatusSyncSettings:
    """Employee status sync between retailCRM users and UIS employees."""

    mode: str = "calls_available"
    mapping: str = DEFAULT_STATUS_MAPPING
    poll_seconds: float = 0.0  # 0: UIS -> retailCRM sync is off

    def pairs(self) -> dict[str, str]:
        """retailCRM status -> UIS state for all four statuses (defaults fill the gaps)."""
        result = dict(mapping_pairs(DEFAULT_STATUS_MAPPING))
        result.update(mapping_pairs(self.mapping))
        return result


@dataclass(frozen=True)
class RoutingSettings:
    """Responsible-manager routing (UIS interactive call processing, features/routing.py)."""

    enabled: bool = True
    deadline_seconds: float = 1.0
    cache_seconds: float = 60.0
    ignore_status: bool = False
    fallback_returned_code: int = 0
    fallback_phones: tuple[str, ...] = phones()


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
class CustomerSettings:
    """Customers for new callers."""

    create: bool = True  # an unknown caller becomes one retailCRM customer


@dataclass(frozen=True)
class TaskSettings:
    """A retailCRM task for every missed call, completed when the customer is reached."""

    missed_calls: bool = True
    complete_on_reach: bool = True
    fallback_performer_id: int = 0  # retailCRM user id; 0: none (a task needs a performer)
    callback_target_minutes: float = 15.0


@dataclass(frozen=True)
class AttributionSettings:
    """Campaign and UTM marks from UIS's call report, passed on to retailCRM."""

    enabled: bool = True


@dataclass(frozen=True)
class OrderSettings:
    """Orders for new callers (off by default)."""

    create_for_new_callers: bool = False
    method: str = "phone"  # retailCRM order method code


@dataclass(frozen=True)
class DealSettings:
    """retailCRM orders into UIS's end-to-end analytics as deals (off by default)."""

    enabled: bool = False  # it writes into the user's UIS account
    poll_seconds: float = 60.0
    won_status_groups: tuple[str, ...] = strings("complete")
    lost_status_groups: tuple[str, ...] = strings("cancel")


UI_LANGUAGES = ("auto", "ru", "en")


@dataclass(frozen=True)
class UiSettings:
    """The status page as people read it."""

    language: str = "auto"  # auto: the browser's Accept-Language; or ru / en


@dataclass(frozen=True)
class Settings:
    """The whole configuration, frozen. Each field but ``employees`` is one TOML section."""

    server: ServerSettings
    uis: UisSettings
    crm: CrmSettings
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    log: LogSettings = field(default_factory=LogSettings)
    employees: tuple[Employee, ...] = field(default=())
    click: ClickSettings = field(default_factory=ClickSettings)
    status_sync: StatusSyncSettings = field(default_factory=StatusSyncSettings)
    routing: RoutingSettings = field(default_factory=RoutingSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    ratelimit: RateLimitSettings = field(default_factory=RateLimitSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    sweeper: SweeperSettings = field(default_factory=SweeperSettings)
    reconcile: ReconcileSettings = field(default_factory=ReconcileSettings)
    customers: CustomerSettings = field(default_factory=CustomerSettings)
    tasks: TaskSettings = field(default_factory=TaskSettings)
    attribution: AttributionSettings = field(default_factory=AttributionSettings)
    orders: OrderSettings = field(default_factory=OrderSettings)
    deals: DealSettings = field(default_factory=DealSettings)
    ui: UiSettings = field(default_factory=UiSettings)

    def employee_by_uis_id(self, uis_id: int | None) -> Employee | None:
        """The mapping for a UIS employee id, or None when it is not mapped."""
        if uis_id is None:
            return None
        for employee in self.employees:
            if employee.uis_id == uis_id:
                return employee
        return None


def dial_string(raw: str) -> str:
    """A number or extension as UIS dials it: ``+7 (900) 123-45-67`` -> ``79001234567``.

    Spaces, dashes, dots, parentheses and a leading ``+`` go; anything else is kept so that
    validation can name it.
    """
    text = raw.strip()
    text = text[1:] if text.startswith("+") else text
    return "".join(ch for ch in text if ch not in " -.()")

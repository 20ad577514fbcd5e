"""Settings: typed, frozen dataclasses and their parsing from TOML and the environment."""

from tracker.config.settings import (
    CRM_STATUSES,
    DEFAULT_STATUS_MAPPING,
    SCHEMA,
    ClickSettings,
    CrmSettings,
    Employee,
    RateLimitSettings,
    ReconcileSettings,
    RetentionSettings,
    RoutingSettings,
    Secret,
    Settings,
    StatusSyncSettings,
    UisSettings,
    dial_string,
    load,
    parse,
)
from tracker.errors import ConfigError

__all__ = [
    "CRM_STATUSES", "DEFAULT_STATUS_MAPPING", "SCHEMA", "ClickSettings", "ConfigError",
    "CrmSettings", "Employee", "RateLimitSettings", "ReconcileSettings", "RetentionSettings",
    "RoutingSettings", "Secret", "Settings", "StatusSyncSettings", "UisSettings", "dial_string",
    "load", "parse",
]

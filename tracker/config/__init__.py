"""Settings: typed, frozen dataclasses (``settings``) and their parsing (``parse``)."""

from tracker.config.parse import SCHEMA, exposed_mode, load, parse, random_enough
from tracker.config.settings import (
    CRM_STATUSES,
    DEFAULT_STATUS_MAPPING,
    AdminSettings,
    AttributionSettings,
    ClickSettings,
    CrmSettings,
    CustomerSettings,
    DatabaseSettings,
    DealSettings,
    Employee,
    OrderSettings,
    RateLimitSettings,
    ReconcileSettings,
    RetentionSettings,
    RoutingSettings,
    Secret,
    ServerSettings,
    Settings,
    StatusSyncSettings,
    TaskSettings,
    UiSettings,
    UisSettings,
    dial_string,
)
from tracker.errors import ConfigError

__all__ = [
    "CRM_STATUSES", "DEFAULT_STATUS_MAPPING", "SCHEMA", "AdminSettings", "AttributionSettings",
    "ClickSettings", "ConfigError", "CrmSettings", "CustomerSettings", "DatabaseSettings",
    "DealSettings", "Employee", "OrderSettings", "RateLimitSettings", "ReconcileSettings",
    "RetentionSettings", "RoutingSettings", "Secret", "ServerSettings", "Settings",
    "StatusSyncSettings", "TaskSettings", "UiSettings", "UisSettings", "dial_string",
    "exposed_mode", "load", "parse", "random_enough",
]

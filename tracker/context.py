"""The one context object passed down from the composition root (no globals anywhere)."""

from __future__ import annotations

from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from tracker.clients.crm import CrmClient
from tracker.clients.uis import UisClient
from tracker.config import Settings
from tracker.core.statecharts import Chart
from tracker.db.checkpointer import Checkpointer
from tracker.db.integrity import BackgroundCheck
from tracker.db.store import Store
from tracker.delivery.dispatcher import Outbox
from tracker.intake.batcher import Intake
from tracker.live import Live
from tracker.metrics import Metrics


@dataclass
class Lifecycle:
    """The little that changes while the daemon runs."""

    started_at: float = 0.0
    draining: bool = False


@dataclass(frozen=True)
class Context:
    """Settings, store, statechart and clients of one running daemon."""

    settings: Settings
    store: Store
    chart: Chart
    outbox: Outbox
    crm: CrmClient
    uis: UisClient
    intake: Intake  # the webhook's group commit
    integrity: BackgroundCheck  # the database check, when it runs after start-up
    checkpointer: Checkpointer  # WAL checkpoints in a thread
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    metrics: Metrics = field(default_factory=Metrics)
    live: Live = field(default_factory=Live)  # change feed of the status page

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.settings.crm.timezone)

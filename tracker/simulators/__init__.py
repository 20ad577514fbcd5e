"""Hand-written fakes of UIS and retailCRM speaking the real wire formats, for tests and the demo.

``scenarios`` scripts calls without I/O; ``UisSimulator`` reports and plays them, ``CrmSimulator``
records what the tracker sends; ``open_server``/``RestartableServer`` serve either in-process.
"""

from tracker.simulators.crm import CrmRequest, CrmSimulator
from tracker.simulators.scenarios import Leg, Scenario, Sent, render_notification
from tracker.simulators.server import Changes, RestartableServer, open_server
from tracker.simulators.uis import Delivery, UisSimulator

__all__ = [
    "Changes",
    "CrmRequest",
    "CrmSimulator",
    "Delivery",
    "Leg",
    "Sent",
    "RestartableServer",
    "Scenario",
    "UisSimulator",
    "open_server",
    "render_notification",
]

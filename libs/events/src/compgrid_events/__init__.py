"""CompGrid event contracts.

Importing this package registers every contract in :data:`registry`.
"""

from compgrid_events import auth, billing, inventory, metering, provisioner
from compgrid_events.base import Contract, Event, Money, utc_now, uuid7
from compgrid_events.registry import EventRegistry, UnknownSubjectError, registry
from compgrid_events.streams import ALL_STREAMS, StreamSpec

__all__ = [
    "ALL_STREAMS",
    "Contract",
    "Event",
    "EventRegistry",
    "Money",
    "StreamSpec",
    "UnknownSubjectError",
    "auth",
    "billing",
    "inventory",
    "metering",
    "provisioner",
    "registry",
    "utc_now",
    "uuid7",
]

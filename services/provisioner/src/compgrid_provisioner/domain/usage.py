"""Usage intervals: what one observation of a running domain adds to metering.

An instance running on a host carries an open interval ``[metered_from, …)`` and the guest's
CPU-time counter at ``metered_from``. Each sampling round closes the open interval at the
observation time and opens the next one there; a start opens the first, a stop (or a domain
found gone) closes the last. The intervals of one instance are therefore contiguous and never
overlap, and their sum is exactly the time it was observed running.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

_TICKS = uuid.UUID("5d0b8f7e-3c38-4f4e-9a53-7f1f3f1d2c11")


@dataclass(frozen=True)
class Observation:
    """One instance's open interval closed at ``until``."""

    instance_id: UUID
    since: datetime
    until: datetime
    cpu_time_ns: int


def cpu_used(previous_ns: int, current_ns: int, seconds: float, vcpus: int) -> int:
    """CPU time used between two counter readings, bounded by what the vCPUs could use.

    A counter that went down means the guest process restarted (counting from zero again); the
    bound keeps a counter that jumped (a simulated host, a clock step) from billing more CPU
    than the interval had.
    """
    used = current_ns - previous_ns if current_ns >= previous_ns else current_ns
    ceiling = int(max(seconds, 0.0) * vcpus * 1e9)
    return max(0, min(used, ceiling))


def tick_id(datacenter: str, host: str, observations: list[Observation]) -> str:
    """A deterministic id of one host's sampling round: the same intervals give the same id."""
    digest = hashlib.sha256()
    for item in sorted(observations, key=lambda o: str(o.instance_id)):
        digest.update(
            f"{item.instance_id}|{item.since.isoformat()}|{item.until.isoformat()};".encode()
        )
    return f"{datacenter}.{host}.{uuid.uuid5(_TICKS, digest.hexdigest())}"

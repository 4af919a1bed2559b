"""Usage intervals cut at UTC hour boundaries into whole-number quantities.

A sample says an instance ran during exactly ``[started_at, ended_at)``. Metering counts per
hour, so an interval that crosses an hour is cut there; every quantity is an integer (micro-
seconds, MiB-microseconds, nanoseconds of CPU), so the pieces add up exactly to the interval and
no rounding ever creeps into a total. CPU time is shared out in proportion to each piece's
length, the last piece taking the remainder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from uuid import UUID

from compgrid_events.provisioner import InstanceUsage

HOUR = timedelta(hours=1)


def hour_of(moment: datetime) -> datetime:
    """The start of the UTC hour ``moment`` falls in."""
    return moment.replace(minute=0, second=0, microsecond=0)


def micros(span: timedelta) -> int:
    """A duration in whole microseconds (datetimes carry no finer time)."""
    return (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds


@dataclass(frozen=True)
class Piece:
    """What one instance used within one hour, from one sample."""

    hour: datetime
    instance_id: UUID
    project_id: UUID
    budget_code_id: UUID
    running_us: int
    vcpu_us: int
    memory_mib_us: int
    cpu_ns: int
    gpu_us: dict[str, int] = field(default_factory=dict)


def pieces(sample: InstanceUsage) -> list[Piece]:
    """Cut a sample at hour boundaries; an empty interval gives nothing."""
    total_us = micros(sample.ended_at - sample.started_at)
    if total_us <= 0:
        return []
    found: list[Piece] = []
    cursor = sample.started_at
    cpu_left = sample.cpu_time_ns
    while cursor < sample.ended_at:
        hour = hour_of(cursor)
        stop = min(sample.ended_at, hour + HOUR)
        span = micros(stop - cursor)
        cpu = cpu_left if stop == sample.ended_at else sample.cpu_time_ns * span // total_us
        cpu_left -= cpu
        found.append(
            Piece(
                hour=hour,
                instance_id=sample.instance_id,
                project_id=sample.project_id,
                budget_code_id=sample.budget_code_id,
                running_us=span,
                vcpu_us=span * sample.vcpus,
                memory_mib_us=span * sample.memory_mib,
                cpu_ns=cpu,
                gpu_us={model: span * count for model, count in sample.gpus.items() if count},
            )
        )
        cursor = stop
    return found

"""Events published by metering: closed hourly rollups and idle instances."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated
from uuid import UUID

from pydantic import Field

from compgrid_events.base import Event, UtcDatetime
from compgrid_events.streams import METERING

NonNegative = Annotated[Decimal, Field(ge=0)]


class UsageRecorded(Event):
    """One instance's usage in one closed hour; ``revision`` > 1 corrects an earlier rollup."""

    subject_template = "metering.usage.recorded"
    stream = METERING
    instance_id: UUID
    project_id: UUID
    budget_code_id: UUID
    hour_start: UtcDatetime
    revision: int = Field(default=1, ge=1)
    running_seconds: NonNegative
    vcpu_seconds: NonNegative
    memory_gib_seconds: NonNegative
    gpu_seconds: dict[str, NonNegative] = Field(default_factory=dict)
    storage_gib_seconds: NonNegative = Decimal(0)
    cpu_time_seconds: NonNegative = Decimal(0)

    @property
    def aggregate_id(self) -> str:
        return str(self.instance_id)


class InstanceIdle(Event):
    """An instance used less CPU than the idle threshold for the configured time."""

    subject_template = "metering.instance.idle"
    stream = METERING
    instance_id: UUID
    project_id: UUID
    idle_since: UtcDatetime
    cpu_utilisation_percent: NonNegative

    @property
    def aggregate_id(self) -> str:
        return str(self.instance_id)

"""The ports every metering use case gets, built once in ``bootstrap.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compgrid_metering.adapters.counters import Counters
from compgrid_metering.config import Settings
from compgrid_runtime.rpc import Ask
from compgrid_runtime.uow import UnitOfWork


@dataclass
class Deps:
    """Unit of work, settings, the Redis counters, and a way to ask owning services (None:
    ask nobody)."""

    uow: Callable[[], UnitOfWork]
    settings: Settings
    counters: Counters
    ask: Ask | None = None

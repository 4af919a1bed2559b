"""The ports every metering use case gets, built once in ``bootstrap.py``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from compgrid_metering.adapters.counters import Counters
from compgrid_metering.config import Settings
from compgrid_runtime.uow import UnitOfWork


class Ask(Protocol):
    """Ask another service's request/reply operation on a caller's behalf."""

    def __call__(
        self, service: str, operation: str, body: dict[str, Any], *, token: str
    ) -> Awaitable[Any]: ...


@dataclass
class Deps:
    """Unit of work, settings, the Redis counters, and a way to ask owning services (None:
    ask nobody)."""

    uow: Callable[[], UnitOfWork]
    settings: Settings
    counters: Counters
    ask: Ask | None = None

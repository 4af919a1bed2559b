"""The ports every inventory use case gets, built once in ``bootstrap.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compgrid_inventory.config import Settings
from compgrid_runtime.rpc import Ask
from compgrid_runtime.uow import UnitOfWork


@dataclass
class Deps:
    """Unit of work, settings, and a way to ask owning services (None: ask nobody)."""

    uow: Callable[[], UnitOfWork]
    settings: Settings
    ask: Ask | None = None

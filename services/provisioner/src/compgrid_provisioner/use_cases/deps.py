"""The ports every provisioner use case gets, built once in ``bootstrap.py``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from compgrid_provisioner.adapters.hypervisor import HostPool
from compgrid_provisioner.config import Settings
from compgrid_runtime.uow import UnitOfWork


@dataclass
class Deps:
    """Unit of work, settings and the host connections."""

    uow: Callable[[], UnitOfWork]
    settings: Settings
    hosts: HostPool

    @property
    def datacenter(self) -> str:
        """The one datacenter this process serves."""
        return self.settings.datacenter


def host_pool(settings: Settings) -> HostPool:
    """The host connections a process uses, from its settings."""
    return HostPool(
        domain_type=settings.domain_type,
        storage_pool=settings.storage_pool,
        pool_path=settings.storage_pool_path,
        retry_initial_s=settings.host_retry_initial_s,
        retry_max_s=settings.host_retry_max_s,
        threads=settings.command_concurrency + 4,  # and the observe loop's
    )

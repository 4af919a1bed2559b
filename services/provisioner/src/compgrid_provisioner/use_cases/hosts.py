"""The datacenter's hosts, as the inventory announces them (each change carries the whole host)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row

from compgrid_events.base import utc_now
from compgrid_events.inventory import HostRegistered
from compgrid_provisioner.adapters.tables import host
from compgrid_provisioner.use_cases.deps import Deps
from compgrid_runtime.uow import UnitOfWork


async def on_host_registered(deps: Deps, event: HostRegistered, uow: UnitOfWork) -> None:
    """Keep the newest version of each host of this datacenter."""
    if event.datacenter != deps.datacenter:
        return
    values = {
        "host_id": event.host_id,
        "libvirt_uri": event.libvirt_uri,
        "state": event.state.value,
        "labels": dict(event.labels),
        "version": event.version,
        "updated_at": utc_now(),
    }
    statement = pg_insert(host).values(datacenter=event.datacenter, name=event.name, **values)
    await uow.session.execute(
        statement.on_conflict_do_update(
            index_elements=[host.c.datacenter, host.c.name],
            set_=values,
            where=host.c.version < statement.excluded.version,
        )
    )


async def hosts_of(uow: UnitOfWork, datacenter: str) -> list[Row[Any]]:
    """Every known host of the datacenter."""
    return list(
        (
            await uow.session.execute(
                select(host).where(host.c.datacenter == datacenter).order_by(host.c.name)
            )
        ).all()
    )

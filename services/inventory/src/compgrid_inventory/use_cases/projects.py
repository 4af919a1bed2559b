"""Per project: the quota (admins), the approval and lease policy (its PI), and usage."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update

from compgrid_events.base import Money
from compgrid_events.inventory_api import (
    ProjectPolicyPublic,
    ProjectRef,
    Quota,
    SetPolicy,
    SetQuota,
    Utilisation,
    UtilisationQuery,
)
from compgrid_inventory.adapters.repository import get_project, project_usage
from compgrid_inventory.adapters.tables import datacenter, host, instance, project
from compgrid_inventory.adapters.workers import workers_of
from compgrid_inventory.domain.admission import Limits, Size
from compgrid_inventory.use_cases.deps import Deps
from compgrid_inventory.use_cases.lifecycle import limits
from compgrid_runtime.access import require_project_manager, require_project_reader, require_role
from compgrid_runtime.rpc import Caller


def _quota(size: Limits | Size) -> Quota:
    return Quota(
        max_instances=size.instances,
        max_vcpus=size.vcpus,
        max_memory_mib=size.memory_mib,
        max_gpus=size.gpus,
    )


async def _policy(deps: Deps, session: Any, row: Any) -> ProjectPolicyPublic:
    used = await project_usage(session, row.id)
    effective = limits(deps, row)
    return ProjectPolicyPublic(
        project_id=row.id,
        name=row.name,
        quota=Quota(
            max_instances=row.max_instances,
            max_vcpus=row.max_vcpus,
            max_memory_mib=row.max_memory_mib,
            max_gpus=row.max_gpus,
        ),
        effective_quota=_quota(effective),
        used=_quota(used),
        requires_approval_above=None
        if row.approval_above_amount is None
        else Money(amount=row.approval_above_amount, currency=row.approval_above_currency),
        approval_for_gpus=row.approval_for_gpus,
        default_lease_hours=row.default_lease_hours,
    )


async def get_policy(deps: Deps, caller: Caller, body: ProjectRef) -> ProjectPolicyPublic:
    """A project's quota, what it uses of it, and when its requests need approval."""
    principal = caller.require()
    require_project_reader(principal, principal.project_role(body.project_id))
    async with deps.uow() as uow:
        row = await get_project(uow.session, body.project_id)
        return await _policy(deps, uow.session, row)


async def set_quota(deps: Deps, caller: Caller, body: SetQuota) -> ProjectPolicyPublic:
    """An admin sets a project's quota (None: the platform default); running work stays."""
    require_role(caller.require(), "admin")
    async with deps.uow() as uow:
        await get_project(uow.session, body.project_id, lock=True)
        await uow.session.execute(
            update(project)
            .where(project.c.id == body.project_id)
            .values(**body.model_dump(exclude={"project_id"}))
        )
        row = await get_project(uow.session, body.project_id)
        await uow.commit()
        return await _policy(deps, uow.session, row)


async def set_policy(deps: Deps, caller: Caller, body: SetPolicy) -> ProjectPolicyPublic:
    """The PI decides which requests wait for approval and the default lease."""
    principal = caller.require()
    require_project_manager(principal, principal.project_role(body.project_id))
    limit = body.requires_approval_above
    async with deps.uow() as uow:
        await get_project(uow.session, body.project_id, lock=True)
        await uow.session.execute(
            update(project)
            .where(project.c.id == body.project_id)
            .values(
                approval_above_amount=None if limit is None else limit.amount,
                approval_above_currency=None if limit is None else limit.currency,
                approval_for_gpus=body.approval_for_gpus,
                default_lease_hours=body.default_lease_hours,
            )
        )
        row = await get_project(uow.session, body.project_id)
        await uow.commit()
        return await _policy(deps, uow.session, row)


def _add(into: dict[str, int], more: dict[str, Any]) -> None:
    for key, value in more.items():
        into[key] = into.get(key, 0) + int(value)


async def utilisation(deps: Deps, caller: Caller, body: UtilisationQuery) -> list[Utilisation]:
    """Capacity, claims, instances by state and provisioner workers, per datacenter (or per
    host when asked)."""
    require_role(caller.require(), "admin")
    hosts = select(host, datacenter.c.name.label("datacenter_name")).join(
        datacenter, datacenter.c.id == host.c.datacenter_id
    )
    states = (
        select(instance.c.host_id, instance.c.state, func.count().label("n"))
        .where(instance.c.host_id.is_not(None))
        .group_by(instance.c.host_id, instance.c.state)
    )
    if body.datacenter is not None:
        hosts = hosts.where(datacenter.c.name == body.datacenter)
    async with deps.uow() as uow:
        rows = (await uow.session.execute(hosts.order_by(datacenter.c.name, host.c.name))).all()
        counts = (await uow.session.execute(states)).all()
        seen = await workers_of(uow.session, {r.datacenter_name for r in rows})
    by_host: dict[Any, dict[str, int]] = {}
    for count in counts:
        by_host.setdefault(count.host_id, {})[count.state] = count.n
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = f"{row.datacenter_name}/{row.name}" if body.per_host else row.datacenter_name
        group = groups.setdefault(
            key,
            {
                "gpus": {},
                "gpus_claimed": {},
                "instances_by_state": {},
                "workers": seen.get(row.datacenter_name, []),
            },
        )
        active = row.state == "active"
        for name, value in (
            ("hosts", 1),
            ("active_hosts", int(active)),
            ("vcpus", row.vcpus),
            ("vcpus_schedulable", int(row.vcpus * row.cpu_overcommit) if active else 0),
            ("vcpus_claimed", row.claimed_vcpus),
            ("memory_mib", row.memory_mib),
            (
                "memory_mib_schedulable",
                int(row.memory_mib * row.memory_overcommit) if active else 0,
            ),
            ("memory_mib_claimed", row.claimed_memory_mib),
            ("disk_gib", row.disk_gib),
            ("disk_gib_claimed", row.claimed_disk_gib),
        ):
            group[name] = group.get(name, 0) + value
        _add(group["gpus"], row.gpus)
        _add(group["gpus_claimed"], row.claimed_gpus)
        _add(group["instances_by_state"], by_host.get(row.id, {}))
    return [Utilisation(datacenter=key, **group) for key, group in groups.items()]

"""Watching the hosts: usage ticks every ``tick_interval_s``, reconcile every
``reconcile_interval_s``, and hosts that stay unreachable reported.

One round per host runs in one transaction under an advisory lock of that host, so among the
workers of a datacenter one observes a host at a time; instance rows are taken with ``SKIP
LOCKED``, so an instance a command is working on is left to that command this round (its open
interval simply grows until the next round).

Reconcile compares the CompGrid domains found on the host (by metadata) with the instance map:

- a running instance whose domain is gone → ``InstanceFailed``; stopped on its own →
  ``InstanceStopped``; a stopped one found running → adopted (``InstanceStarted``);
- a domain of an instance that is deleted or failed here → removed (finishing what a crash
  interrupted);
- a domain nobody here knows, defined longer ago than ``orphan_grace_s`` (a create whose
  command will never come again) → removed: no orphan outlives a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Row

from compgrid_events.base import utc_now
from compgrid_events.provisioner import HostUnreachable, InstanceUsage
from compgrid_provisioner.adapters.hypervisor import (
    Found,
    HostUnreachableError,
    Hypervisor,
    HypervisorError,
    Power,
    Sample,
)
from compgrid_provisioner.adapters.tables import host, instance
from compgrid_provisioner.domain.domain_xml import volume_names
from compgrid_provisioner.domain.usage import Observation
from compgrid_provisioner.use_cases.deps import Deps
from compgrid_provisioner.use_cases.hosts import hosts_of
from compgrid_provisioner.use_cases.records import (
    emit_tick,
    mark_failed,
    mark_running,
    mark_stopped,
    set_instance,
    usage_of,
)
from compgrid_runtime.logs import get_logger
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

GONE = "the domain disappeared from its host (not through CompGrid)"
STOPPED = "the domain stopped on its own (not through CompGrid)"


def _lock_key(datacenter: str, host_name: str) -> int:
    digest = hashlib.blake2b(f"provisioner/{datacenter}/{host_name}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


async def observe(deps: Deps) -> None:
    """Run rounds until cancelled: reconcile at once on start, then on its interval."""
    settings = deps.settings
    loop = asyncio.get_running_loop()
    next_reconcile = loop.time()
    try:
        while True:
            started = loop.time()
            reconcile = started >= next_reconcile
            if reconcile:
                next_reconcile = started + settings.reconcile_interval_s
            try:
                await observe_all(deps, reconcile=reconcile)
            except Exception as exc:  # a database hiccup must not end the loop
                log.warning("observation round failed", error=repr(exc))
            await asyncio.sleep(max(0.0, settings.tick_interval_s - (loop.time() - started)))
    finally:
        deps.hosts.close()


async def observe_all(deps: Deps, *, reconcile: bool) -> None:
    """One round over every host of the datacenter (hosts concurrently)."""
    async with deps.uow() as uow:
        hosts = await hosts_of(uow, deps.datacenter)
    results = await asyncio.gather(
        *(observe_host(deps, row, reconcile=reconcile) for row in hosts), return_exceptions=True
    )
    for row, result in zip(hosts, results, strict=True):
        if isinstance(result, Exception):
            log.warning("host round failed", host=row.name, error=repr(result))


async def observe_host(deps: Deps, host_row: Row[Any], *, reconcile: bool) -> None:
    """Sample (and maybe reconcile) one host in one transaction."""
    async with deps.uow() as uow:
        key = _lock_key(host_row.datacenter, host_row.name)
        if not await uow.session.scalar(select(func.pg_try_advisory_xact_lock(key))):
            return  # another worker of this datacenter has the host this round
        rows = list(
            (
                await uow.session.execute(
                    select(instance)
                    .where(
                        instance.c.datacenter == host_row.datacenter,
                        instance.c.host == host_row.name,
                        instance.c.observed.in_(("running", "stopped"))
                        if reconcile
                        else instance.c.observed == "running",
                    )
                    .with_for_update(skip_locked=True)
                )
            ).all()
        )
        try:
            seen = await deps.hosts.call(
                host_row.libvirt_uri, lambda h: _look(h, rows, host_row, reconcile=reconcile)
            )
        except HostUnreachableError as exc:
            await _unreachable(deps, uow, host_row, str(exc))
            await uow.commit()
            return
        if host_row.unreachable_since is not None:
            await _reachable(uow, host_row)
        await _apply(deps, uow, host_row, rows, seen, reconcile=reconcile)
        await uow.commit()


class _Seen:
    def __init__(self) -> None:
        self.samples: dict[Any, Sample | None] = {}
        self.power: dict[Any, Power] = {}
        self.domains: list[Found] = []


def _sample(instance_id: Any, h: Hypervisor) -> Sample | None:
    return h.sample(instance_id)


def _look(h: Hypervisor, rows: list[Row[Any]], host_row: Row[Any], *, reconcile: bool) -> _Seen:
    """Everything a round needs from the host, read in one go (in a worker thread)."""
    seen = _Seen()
    for row in rows:
        if row.observed == "running":
            seen.samples[row.id] = h.sample(row.id)
        seen.power[row.id] = h.power(row.id)
    if reconcile:
        seen.domains = [
            found
            for found in h.ours()
            if found.meta.datacenter == host_row.datacenter and found.meta.host == host_row.name
        ]
    return seen


async def _apply(
    deps: Deps,
    uow: UnitOfWork,
    host_row: Row[Any],
    rows: list[Row[Any]],
    seen: _Seen,
    *,
    reconcile: bool,
) -> None:
    now = utc_now()
    usage: list[InstanceUsage] = []
    for row in rows:
        power = seen.power[row.id]
        if row.observed == "running":
            sample = seen.samples.get(row.id)
            if sample is not None:
                until = max(now, row.metered_from)
                observation = Observation(row.id, row.metered_from, until, sample.cpu_time_ns)
                usage.append(usage_of(row, observation, sample.memory_used_mib))
                await set_instance(uow, row.id, metered_from=until, cpu_time_ns=sample.cpu_time_ns)
            elif power is Power.MISSING:
                log.warning("running domain vanished", instance=str(row.id), host=row.host)
                await mark_failed(uow, row, reason=GONE)
            else:
                log.warning("running domain stopped on its own", instance=str(row.id))
                await mark_stopped(uow, row, sample=None, reason=STOPPED, command_event_id=None)
        elif row.observed == "stopped" and row.desired != "deleted":
            if power is Power.RUNNING:
                log.warning("stopped domain found running: adopted", instance=str(row.id))
                sample = await deps.hosts.call(row.host_uri, partial(_sample, row.id))
                await mark_running(
                    uow,
                    row,
                    cpu_time_ns=sample.cpu_time_ns if sample else 0,
                    addresses=(),
                    domain_uuid=row.id,
                    command_event_id=None,
                )
            elif power is Power.MISSING:
                log.warning("stopped domain vanished", instance=str(row.id))
                await mark_failed(uow, row, reason=GONE)
    emit_tick(uow, host_row.datacenter, host_row.name, usage)
    if reconcile:
        await _remove_leftovers(deps, uow, host_row, rows, seen.domains)


async def _remove_leftovers(
    deps: Deps, uow: UnitOfWork, host_row: Row[Any], rows: list[Row[Any]], domains: list[Found]
) -> None:
    """Remove domains of instances that are gone here, and orphans past their grace."""
    observed = {row.id for row in rows}
    others = [found.meta.instance_id for found in domains if found.meta.instance_id not in observed]
    known: dict[Any, Row[Any]] = {}
    if others:
        # Rows a command holds right now were skipped above: those are busy, not orphans.
        query = select(instance).where(instance.c.id.in_(others))
        known = {row.id: row for row in (await uow.session.execute(query)).all()}
    grace = timedelta(seconds=deps.settings.orphan_grace_s)
    now = utc_now()
    for found in domains:
        instance_id = found.meta.instance_id
        if instance_id in observed:
            continue
        row = known.get(instance_id)
        if row is not None:
            if row.observed in ("failed", "deleted"):
                log.warning(
                    "leftover domain removed", instance=str(instance_id), state=row.observed
                )
                await _remove(deps, host_row, instance_id, list(row.volumes))
            elif row.observed == "creating" and now - row.updated_at >= grace:
                await _abandoned_create(deps, uow, host_row, instance_id)
            continue
        if now - found.meta.defined_at < grace:
            continue
        log.warning("orphaned domain removed", instance=str(instance_id), host=host_row.name)
        await _remove(deps, host_row, instance_id, [])


async def _abandoned_create(
    deps: Deps, uow: UnitOfWork, host_row: Row[Any], instance_id: Any
) -> None:
    """A create that crashed and whose command never came back: fail it, remove its domain."""
    row = (
        await uow.session.execute(
            select(instance)
            .where(instance.c.id == instance_id, instance.c.observed == "creating")
            .with_for_update(skip_locked=True)
        )
    ).first()
    if row is None:
        return  # a command is working on it right now
    log.warning("interrupted create abandoned", instance=str(instance_id))
    await mark_failed(uow, row, reason="creating the domain was interrupted and never resumed")
    await _remove(deps, host_row, instance_id, [])


async def _remove(deps: Deps, host_row: Row[Any], instance_id: Any, volumes: list[str]) -> None:
    try:
        await deps.hosts.call(
            host_row.libvirt_uri,
            lambda h: h.remove(instance_id, volumes or volume_names(instance_id)),
        )
    except HypervisorError as exc:
        log.warning("could not remove domain", instance=str(instance_id), error=str(exc))


async def _unreachable(deps: Deps, uow: UnitOfWork, host_row: Row[Any], reason: str) -> None:
    """Remember since when the host fails; report it once it failed for long enough."""
    now = utc_now()
    since = host_row.unreachable_since or now
    values: dict[str, Any] = {"unreachable_since": since}
    limit = timedelta(seconds=deps.settings.host_unreachable_after_s)
    if not host_row.unreachable_reported and now - since >= limit:
        log.warning("host unreachable: reporting it", host=host_row.name, reason=reason)
        uow.emit(HostUnreachable(datacenter=host_row.datacenter, host=host_row.name, reason=reason))
        values["unreachable_reported"] = True
    await uow.session.execute(
        update(host)
        .where(host.c.datacenter == host_row.datacenter, host.c.name == host_row.name)
        .values(**values)
    )


async def _reachable(uow: UnitOfWork, host_row: Row[Any]) -> None:
    log.info("host reachable again", host=host_row.name)
    await uow.session.execute(
        update(host)
        .where(host.c.datacenter == host_row.datacenter, host.c.name == host_row.name)
        .values(unreachable_since=None, unreachable_reported=False)
    )

"""The datacenter's provisioning commands, each applied once (the inbox) and idempotently.

Each handler locks the instance's row first, so two workers of one datacenter never act on one
instance at once. A command older than the last one applied (``version``) changes nothing; a
repeated command, or one for a domain already in the state asked for, reports the current state
and does no harm. Every libvirt step looks at the domain as it is, so a command redelivered
after a crash finishes what the crashed worker started instead of doing it twice.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Row

from compgrid_events.base import utc_now
from compgrid_events.inventory import (
    GPU_PCI_LABEL,
    InstanceDeleteRequested,
    InstanceRebootRequested,
    InstanceScheduled,
    InstanceStartRequested,
    InstanceStopRequested,
    gpu_devices,
)
from compgrid_provisioner.adapters.hypervisor import (
    Hypervisor,
    HypervisorError,
    Power,
    Sample,
)
from compgrid_provisioner.adapters.tables import host, instance
from compgrid_provisioner.domain.domain_xml import (
    Disk,
    DomainSpec,
    Meta,
    Network,
    domain_name,
    volume_names,
)
from compgrid_provisioner.domain.seed import seed_iso
from compgrid_provisioner.use_cases.deps import Deps
from compgrid_provisioner.use_cases.records import (
    host_uri,
    lock_instance,
    mark_deleted,
    mark_failed,
    mark_running,
    mark_stopped,
    set_instance,
)
from compgrid_runtime.faults import fault_point
from compgrid_runtime.logs import get_logger
from compgrid_runtime.retry import PermanentError
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)


class HostNotYetKnownError(Exception):
    """A command for a host whose announcement has not reached this worker yet (retried)."""


def _ours(deps: Deps, datacenter: str) -> None:
    if datacenter != deps.datacenter:
        # The consumer's subject filter keeps these out; this is the second lock on the door.
        raise PermanentError(f"command for datacenter {datacenter}, this is {deps.datacenter}")


def _stale(row: Row[Any], version: int, command: str) -> bool:
    if version < row.command_version:
        log.info("stale command ignored", instance=str(row.id), command=command, version=version)
        return True
    return False


async def _report_current(
    deps: Deps, uow: UnitOfWork, row: Row[Any], command_event_id: UUID
) -> None:
    """Say again what the instance is (a repeated command gets the current state)."""
    if row.observed in ("running", "stopped"):
        power = await deps.hosts.call(row.host_uri, lambda h: h.power(row.id))
        if power is Power.RUNNING and row.observed == "running":
            await mark_running(
                uow,
                row,
                cpu_time_ns=row.cpu_time_ns,
                addresses=(),
                domain_uuid=row.id,
                command_event_id=command_event_id,
            )
            return
        if power is Power.OFF and row.observed == "stopped":
            await mark_stopped(
                uow, row, sample=None, reason=row.reason, command_event_id=command_event_id
            )
            return
    log.info("repeated command: state unchanged", instance=str(row.id), observed=row.observed)


# Create -------------------------------------------------------------------------------------


async def _gpu_addresses(uow: UnitOfWork, event: InstanceScheduled) -> tuple[str, ...]:
    """Pick free PCI devices of the host for the instance's GPUs (the host row is locked while
    choosing, so two creates on one host never pick the same device)."""
    wanted = {gpu.model: gpu.count for gpu in event.resources.gpus}
    if not wanted:
        return ()
    labels = await uow.session.scalar(
        select(host.c.labels)
        .where(host.c.datacenter == event.datacenter, host.c.name == event.host)
        .with_for_update()
    )
    if labels is None:
        # The host's announcement comes on another stream and has not been applied yet: try
        # the command again shortly (nak with backoff) rather than fail it.
        raise HostNotYetKnownError(f"host {event.host} of {event.datacenter} is not known yet")
    taken_rows = await uow.session.scalars(
        select(instance.c.gpu_addresses).where(
            instance.c.datacenter == event.datacenter,
            instance.c.host == event.host,
            instance.c.id != event.instance_id,
            instance.c.observed.notin_(("failed", "deleted")),
        )
    )
    taken = {address for addresses in taken_rows for address in addresses}
    chosen: list[str] = []
    for model, count in sorted(wanted.items()):
        free = [a for a in gpu_devices(labels, model) if a not in taken]
        if len(free) < count:
            raise HypervisorError(
                f"host {event.host} has {len(free)} free {model} GPU(s) of {count} needed "
                f"(PCI addresses come from its label {GPU_PCI_LABEL}{model})"
            )
        chosen += free[:count]
    return tuple(chosen)


def _build(
    h: Hypervisor, deps: Deps, event: InstanceScheduled, gpus: tuple[str, ...]
) -> tuple[list[str], DomainSpec]:
    """Volumes first (copy-on-write disk, cloud-init seed), then the domain definition."""
    volumes: list[str] = []
    disks: list[Disk] = []
    resources = event.resources
    if event.image_source and resources.disk_gib > 0:
        name = volume_names(event.instance_id)[0]
        volumes.append(name)
        path = h.create_overlay(name, event.image_source, event.image_format, resources.disk_gib)
        disks.append(Disk(path=path))
        if deps.settings.cloud_init:
            seed = volume_names(event.instance_id)[1]
            volumes.append(seed)
            data = seed_iso(event.instance_id, event.name, event.default_user, event.ssh_public_key)
            disks.append(Disk(path=h.upload(seed, data), device="sda", format="raw", cdrom=True))
    spec = DomainSpec(
        meta=Meta(
            instance_id=event.instance_id,
            project_id=event.project_id,
            budget_code_id=event.budget_code_id,
            datacenter=event.datacenter,
            host=event.host,
            defined_at=utc_now(),
        ),
        name=domain_name(event.instance_id),
        domain_type=h.domain_type,
        vcpus=resources.vcpus,
        memory_mib=resources.memory_mib,
        disks=tuple(disks),
        network=Network("none" if h.simulated else deps.settings.network),
        gpu_addresses=gpus,
    )
    return volumes, spec


def _create(
    h: Hypervisor, deps: Deps, event: InstanceScheduled, gpus: tuple[str, ...]
) -> tuple[list[str], Sample | None, tuple[str, ...]]:
    volumes: list[str] = []
    try:
        volumes, spec = _build(h, deps, event, gpus)
        fault_point("provisioner.before_define")
        h.define_and_start(spec)
        fault_point("provisioner.after_start")
    except HypervisorError:
        _undo(h, event.instance_id, volumes or volume_names(event.instance_id))
        raise
    return volumes, h.sample(event.instance_id), h.addresses(event.instance_id)


def _undo(h: Hypervisor, instance_id: UUID, volumes: list[str]) -> None:
    """Leave no half-made domain or volume behind a failed create."""
    try:
        h.remove(instance_id, volumes)
    except HypervisorError as exc:  # the reconcile loop removes it once the host answers
        log.warning("cleanup after failed create failed", instance=str(instance_id), error=str(exc))


async def _record(deps: Deps, event: InstanceScheduled) -> None:
    """Commit the instance's row before any domain exists, in a transaction of its own.

    Reconcile then always finds a row for a domain being created (``creating``): a domain
    without one is an orphan, and a create interrupted by a crash is resumed by the
    redelivered command (or, if none comes, failed and removed by reconcile).
    """
    resources = event.resources
    async with deps.uow() as uow:
        await uow.session.execute(
            pg_insert(instance)
            .values(
                id=event.instance_id,
                datacenter=event.datacenter,
                host=event.host,
                host_uri=event.host_uri,
                name=event.name,
                project_id=event.project_id,
                budget_code_id=event.budget_code_id,
                vcpus=resources.vcpus,
                memory_mib=resources.memory_mib,
                disk_gib=resources.disk_gib,
                gpus={gpu.model: gpu.count for gpu in resources.gpus},
                desired="running",
                observed="creating",
                command_version=event.version,
            )
            .on_conflict_do_nothing()
        )
        await uow.commit()


async def on_scheduled(deps: Deps, event: InstanceScheduled, uow: UnitOfWork) -> None:
    """Create and start the instance's domain on its host."""
    _ours(deps, event.datacenter)
    await _record(deps, event)
    row = await lock_instance(uow, event.instance_id)
    assert row is not None
    if _stale(row, event.version, "create") or row.desired == "deleted":
        return
    if row.observed in ("failed", "deleted"):
        log.info("create of a failed or deleted instance ignored", instance=str(row.id))
        return
    if row.observed in ("running", "stopped"):
        await _report_current(deps, uow, row, event.event_id)
        return
    try:
        gpus = await _gpu_addresses(uow, event)
        volumes, sample, addresses = await deps.hosts.call(
            event.host_uri, lambda h: _create(h, deps, event, gpus)
        )
    except HypervisorError as exc:
        reason = f"could not create the domain on {event.host}: {exc}"
        log.warning("create failed", instance=str(event.instance_id), reason=reason)
        await mark_failed(uow, row, reason=reason, command_event_id=event.event_id)
        return
    await mark_running(
        uow,
        row,
        cpu_time_ns=sample.cpu_time_ns if sample else 0,
        addresses=addresses,
        domain_uuid=event.instance_id,
        command_event_id=event.event_id,
        gpu_addresses=list(gpus),
        volumes=volumes,
    )
    log.info("instance created", instance=str(event.instance_id), host=event.host)


# Power and delete ---------------------------------------------------------------------------


async def _known(uow: UnitOfWork, instance_id: UUID) -> Row[Any]:
    row = await lock_instance(uow, instance_id)
    if row is None:
        raise PermanentError(f"command for instance {instance_id}, never created here")
    return row


async def _gone(
    uow: UnitOfWork, row: Row[Any], command_event_id: UUID, sample: Sample | None = None
) -> None:
    await mark_failed(
        uow,
        row,
        reason="the domain is gone from its host",
        sample=sample,
        command_event_id=command_event_id,
    )


async def _runs(
    deps: Deps, uow: UnitOfWork, row: Row[Any], command_event_id: UUID, cpu_time_ns: int
) -> None:
    """Report the instance running, with the addresses its host knows now."""
    await mark_running(
        uow,
        row,
        cpu_time_ns=cpu_time_ns,
        addresses=await deps.hosts.call(row.host_uri, lambda h: h.addresses(row.id)),
        domain_uuid=row.id,
        command_event_id=command_event_id,
    )


async def on_start(deps: Deps, event: InstanceStartRequested, uow: UnitOfWork) -> None:
    """Start a stopped instance."""
    _ours(deps, event.datacenter)
    row = await _known(uow, event.instance_id)
    if _stale(row, event.version, "start") or row.observed in ("failed", "deleted"):
        return
    await set_instance(uow, row.id, desired="running", command_version=event.version)
    power = await deps.hosts.call(row.host_uri, lambda h: h.start(row.id))
    if power is Power.MISSING:
        await _gone(uow, row, event.event_id)
        return
    sample = await deps.hosts.call(row.host_uri, lambda h: h.sample(row.id))
    await _runs(deps, uow, row, event.event_id, sample.cpu_time_ns if sample else 0)


async def on_stop(deps: Deps, event: InstanceStopRequested, uow: UnitOfWork) -> None:
    """Shut the guest down (forced after the timeout) and close its last usage interval."""
    _ours(deps, event.datacenter)
    row = await _known(uow, event.instance_id)
    if _stale(row, event.version, "stop") or row.observed in ("failed", "deleted"):
        return
    await set_instance(uow, row.id, desired="stopped", command_version=event.version)
    timeout = deps.settings.stop_timeout_s

    def stop(h: Hypervisor) -> tuple[Sample | None, Power]:
        sample = h.sample(row.id)
        return sample, h.stop(row.id, timeout)

    sample, power = await deps.hosts.call(row.host_uri, stop)
    if power is Power.MISSING:
        await _gone(uow, row, event.event_id, sample)
        return
    await mark_stopped(
        uow,
        row,
        sample=sample,
        reason=event.reason or "stopped on request",
        command_event_id=event.event_id,
    )


async def on_reboot(deps: Deps, event: InstanceRebootRequested, uow: UnitOfWork) -> None:
    """Reboot a running guest; it keeps running (and being metered) throughout."""
    _ours(deps, event.datacenter)
    row = await _known(uow, event.instance_id)
    if _stale(row, event.version, "reboot") or row.observed != "running":
        return
    await set_instance(uow, row.id, command_version=event.version)
    power = await deps.hosts.call(row.host_uri, lambda h: h.reboot(row.id))
    if power is Power.MISSING:
        await _gone(uow, row, event.event_id)
    elif power is Power.OFF:
        await mark_stopped(
            uow, row, sample=None, reason="found stopped", command_event_id=event.event_id
        )
    else:
        await _runs(deps, uow, row, event.event_id, row.cpu_time_ns)


async def on_delete(deps: Deps, event: InstanceDeleteRequested, uow: UnitOfWork) -> None:
    """Remove the domain and its volumes (a host that does not answer: retried later)."""
    _ours(deps, event.datacenter)
    row = await lock_instance(uow, event.instance_id)
    if row is None:
        # Never created here (say it failed before reaching us): make sure nothing is left.
        uri = await host_uri(uow, event.datacenter, event.host)
        if uri is not None:
            await deps.hosts.call(
                uri, lambda h: h.remove(event.instance_id, volume_names(event.instance_id))
            )
        log.info("delete of an instance never created here", instance=str(event.instance_id))
        return
    if _stale(row, event.version, "delete"):
        return
    if row.observed == "deleted":
        await mark_deleted(uow, row, sample=None, command_event_id=event.event_id)
        return
    await set_instance(uow, row.id, desired="deleted", command_version=event.version)
    volumes = list(row.volumes) or volume_names(row.id)

    def remove(h: Hypervisor) -> Sample | None:
        sample = h.sample(row.id)
        h.remove(row.id, volumes)
        return sample

    sample = await deps.hosts.call(row.host_uri, remove)
    await mark_deleted(uow, row, sample=sample, command_event_id=event.event_id)

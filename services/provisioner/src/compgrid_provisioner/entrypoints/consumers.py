"""The provisioner's durable consumers, per datacenter: its hosts and its commands.

Every worker of one datacenter binds the same durables, so the commands are shared out among
them (queue semantics) and a datacenter's commands never reach another datacenter's workers.
"""

from __future__ import annotations

from functools import partial

from compgrid_events.inventory import (
    HostRegistered,
    InstanceDeleteRequested,
    InstanceRebootRequested,
    InstanceScheduled,
    InstanceStartRequested,
    InstanceStopRequested,
)
from compgrid_events.streams import INVENTORY, PROVISION
from compgrid_provisioner.use_cases import commands
from compgrid_provisioner.use_cases.deps import Deps
from compgrid_provisioner.use_cases.hosts import on_host_registered
from compgrid_runtime.consumers import Consumers, ConsumerSpec


def hosts_spec(datacenter: str) -> ConsumerSpec:
    """The datacenter's host announcements, from the start of the stream."""
    return ConsumerSpec(
        f"{datacenter}-hosts",
        INVENTORY,
        HostRegistered.subject_for(datacenter=datacenter),
        f"hosts of datacenter {datacenter}",
    )


def commands_spec(deps: Deps) -> ConsumerSpec:
    """The datacenter's provisioning commands."""
    datacenter = deps.datacenter
    return ConsumerSpec(
        f"{datacenter}-commands",
        PROVISION,
        f"provision.{datacenter}.instance.>",
        f"create, start, stop, reboot and delete in datacenter {datacenter}",
        batch_size=16,
        ack_wait_s=deps.settings.command_ack_wait_s,
        # A hypervisor call takes from milliseconds to a stop's whole timeout: commands for
        # different instances run side by side, each instance's commands in order.
        concurrency=deps.settings.command_concurrency,
        key=lambda event: getattr(event, "instance_id", None),
    )


def register_consumers(consumers: Consumers, deps: Deps) -> None:
    """Bind every handler to its durable consumer."""
    consumers.add(hosts_spec(deps.datacenter), {HostRegistered: partial(on_host_registered, deps)})
    consumers.add(
        commands_spec(deps),
        {
            InstanceScheduled: partial(commands.on_scheduled, deps),
            InstanceStartRequested: partial(commands.on_start, deps),
            InstanceStopRequested: partial(commands.on_stop, deps),
            InstanceRebootRequested: partial(commands.on_reboot, deps),
            InstanceDeleteRequested: partial(commands.on_delete, deps),
        },
    )

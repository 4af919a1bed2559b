"""The inventory's request/reply operations (``rpc.inventory.<operation>``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from pydantic import BaseModel

from compgrid_events import inventory_api as api
from compgrid_inventory.domain.lifecycle import Action
from compgrid_inventory.use_cases import catalog, instances, maintenance, projects
from compgrid_inventory.use_cases.deps import Deps
from compgrid_runtime.rpc import RpcServer

UseCase = Callable[..., Awaitable[Any]]

OPERATIONS: dict[str, tuple[UseCase, type[BaseModel] | None]] = {
    "datacenters.create": (catalog.create_datacenter, api.CreateDatacenter),
    "datacenters.update": (catalog.update_datacenter, api.UpdateDatacenter),
    "datacenters.list": (catalog.list_datacenters, None),
    "hosts.register": (catalog.register_host, api.RegisterHost),
    "hosts.update": (catalog.update_host, api.UpdateHost),
    "hosts.get": (catalog.get_host, api.HostRef),
    "hosts.list": (catalog.list_hosts, api.ListHosts),
    "images.create": (catalog.create_image, api.CreateImage),
    "images.list": (catalog.list_images, None),
    "price_tiers.create": (catalog.create_price_tier, api.CreatePriceTier),
    "price_tiers.add_rates": (catalog.add_rates, api.AddRates),
    "price_tiers.get": (catalog.get_price_tier, api.PriceTierRef),
    "price_tiers.list": (catalog.list_price_tiers, None),
    "types.create": (catalog.create_instance_type, api.CreateInstanceType),
    "types.list": (catalog.list_instance_types, api.ListInstanceTypes),
    "types.retire": (catalog.retire_instance_type, api.InstanceTypeRef),
    "instances.request": (instances.request_instance, api.RequestInstance),
    "instances.request_by_requirements": (
        instances.request_by_requirements,
        api.RequestByRequirements,
    ),
    "instances.get": (instances.get_instance_detail, api.InstanceRef),
    "instances.list": (instances.list_instances, api.ListInstances),
    "instances.start": (partial(instances.act, action=Action.START), api.InstanceRef),
    "instances.stop": (partial(instances.act, action=Action.STOP), api.InstanceRef),
    "instances.reboot": (partial(instances.act, action=Action.REBOOT), api.InstanceRef),
    "instances.delete": (partial(instances.act, action=Action.DELETE), api.InstanceRef),
    "instances.approve": (instances.approve, api.Decide),
    "instances.deny": (instances.deny, api.Deny),
    "instances.set_lease": (instances.set_lease, api.SetLease),
    "projects.get": (projects.get_policy, api.ProjectRef),
    "projects.set_quota": (projects.set_quota, api.SetQuota),
    "projects.set_policy": (projects.set_policy, api.SetPolicy),
    "cluster.utilisation": (projects.utilisation, api.UtilisationQuery),
    "claims.repair": (maintenance.repair_now, None),
}


def register_routes(rpc: RpcServer, deps: Deps) -> None:
    """Bind every operation to its use case with the service's ports."""
    for operation, (use_case, model) in OPERATIONS.items():
        rpc.route(operation, partial(use_case, deps), model)

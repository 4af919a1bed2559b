"""What the cluster offers (``rpc.inventory``): datacenters, hosts, images, price tiers and
instance types. Changing them is for admins; reading the offer is for everyone signed in."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from compgrid_events import inventory_api as api
from compgrid_gateway.backend import CtxDep
from compgrid_gateway.routes.common import (
    ETAG_HEADER,
    body_of,
    created,
    expected_version,
    guarded,
    json_response,
    problems,
    with_etag,
    without,
)

router = APIRouter(responses=problems(412))

DatacenterChange = without(api.UpdateDatacenter, "datacenter", name="DatacenterChange")
HostChange = without(api.UpdateHost, "host_id", "expected_version", name="HostChange")
NewRates = without(api.AddRates, "price_tier_id", name="NewRates")
DatacenterName = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


@router.get("/datacenters", tags=["datacenters"], response_model=list[api.DatacenterPublic])
async def list_datacenters(ctx: CtxDep) -> Response:
    """Every datacenter with its number of hosts and its provisioner workers (when each was
    last heard from; a datacenter without a live worker takes no new instances)."""
    return json_response(await ctx.relay("inventory", "datacenters.list"))


@router.post(
    "/datacenters", tags=["datacenters"], status_code=201, response_model=api.DatacenterPublic
)
async def create_datacenter(request: Request, ctx: CtxDep, body: api.CreateDatacenter) -> Response:
    """Add a datacenter (admins)."""
    made = await ctx.ask("inventory", "datacenters.create", body)
    return created(request, made, f"/datacenters/{made['name']}")


@router.patch(
    "/datacenters/{datacenter}", tags=["datacenters"], response_model=api.DatacenterPublic
)
async def update_datacenter(
    ctx: CtxDep,
    datacenter: DatacenterName,
    body: DatacenterChange,  # type: ignore[valid-type]
) -> Response:
    """Change how a datacenter weighs its hosts, or its description (admins)."""
    payload = body_of(body, datacenter=datacenter)
    return json_response(await ctx.relay("inventory", "datacenters.update", payload))


@router.get("/hosts", tags=["hosts"], response_model=api.Page[api.HostPublic])
async def list_hosts(ctx: CtxDep, params: Annotated[api.ListHosts, Query()]) -> Response:
    """Hosts with their capacity and claims (admins), filtered by datacenter and state."""
    return json_response(await ctx.relay("inventory", "hosts.list", params))


@router.post("/hosts", tags=["hosts"], status_code=201, response_model=api.HostPublic)
async def register_host(request: Request, ctx: CtxDep, body: api.RegisterHost) -> Response:
    """Register a hypervisor host in a datacenter (admins)."""
    host = await ctx.ask("inventory", "hosts.register", body)
    return created(request, host, f"/hosts/{host['id']}", versioned=True)


@router.get(
    "/hosts/{host_id}", tags=["hosts"], response_model=api.HostPublic, responses=ETAG_HEADER
)
async def get_host(ctx: CtxDep, host_id: UUID) -> Response:
    """A host, with its version as the ETag."""
    return with_etag(await ctx.ask("inventory", "hosts.get", {"host_id": str(host_id)}))


@router.patch("/hosts/{host_id}", tags=["hosts"], response_model=api.HostPublic)
async def update_host(
    request: Request,
    ctx: CtxDep,
    host_id: UUID,
    body: HostChange,  # type: ignore[valid-type]
) -> Response:
    """Change a host (state ``active``/``maintenance``/``down``, size, labels...);
    with ``If-Match`` the change is refused (412) when the host changed since it was read."""
    ctx.principal()  # who asks comes before whether the version matches
    ref = {"host_id": str(host_id)}
    version = await expected_version(
        request, required=False, current=lambda: ctx.ask("inventory", "hosts.get", ref)
    )
    payload = body_of(body, host_id=host_id, expected_version=version)
    return with_etag(await guarded(ctx.ask("inventory", "hosts.update", payload)))


@router.get("/images", tags=["images"], response_model=list[api.ImagePublic])
async def list_images(ctx: CtxDep) -> Response:
    """Bootable images."""
    return json_response(await ctx.relay("inventory", "images.list"))


@router.post("/images", tags=["images"], status_code=201, response_model=api.ImagePublic)
async def create_image(request: Request, ctx: CtxDep, body: api.CreateImage) -> Response:
    """Add an image the provisioners can find at its source (admins)."""
    image = await ctx.ask("inventory", "images.create", body)
    return created(request, image, f"/images/{image['id']}")


@router.get("/price-tiers", tags=["prices"], response_model=list[api.PriceTierPublic])
async def list_price_tiers(ctx: CtxDep) -> Response:
    """Price tiers with their current rates and history."""
    return json_response(await ctx.relay("inventory", "price_tiers.list"))


@router.post("/price-tiers", tags=["prices"], status_code=201, response_model=api.PriceTierPublic)
async def create_price_tier(request: Request, ctx: CtxDep, body: api.CreatePriceTier) -> Response:
    """A named tier with its first rates (admins)."""
    tier = await ctx.ask("inventory", "price_tiers.create", body)
    return created(request, tier, f"/price-tiers/{tier['id']}")


@router.get("/price-tiers/{price_tier_id}", tags=["prices"], response_model=api.PriceTierPublic)
async def get_price_tier(ctx: CtxDep, price_tier_id: UUID) -> Response:
    """One tier."""
    payload = {"price_tier_id": str(price_tier_id)}
    return json_response(await ctx.relay("inventory", "price_tiers.get", payload))


@router.post(
    "/price-tiers/{price_tier_id}/rates", tags=["prices"], response_model=api.PriceTierPublic
)
async def add_rates(ctx: CtxDep, price_tier_id: UUID, body: NewRates) -> Response:  # type: ignore[valid-type]
    """New rates from a date on; a past date corrects history and billing re-rates (admins)."""
    payload = body_of(body, price_tier_id=price_tier_id)
    return json_response(await ctx.relay("inventory", "price_tiers.add_rates", payload))


@router.get("/instance-types", tags=["instance types"], response_model=list[api.InstanceTypePublic])
async def list_instance_types(
    ctx: CtxDep, params: Annotated[api.ListInstanceTypes, Query()]
) -> Response:
    """The sizes researchers can ask for, with their hourly price."""
    return json_response(await ctx.relay("inventory", "types.list", params))


@router.post(
    "/instance-types",
    tags=["instance types"],
    status_code=201,
    response_model=api.InstanceTypePublic,
)
async def create_instance_type(
    request: Request, ctx: CtxDep, body: api.CreateInstanceType
) -> Response:
    """Offer a new size, priced by a tier (admins)."""
    made = await ctx.ask("inventory", "types.create", body)
    return created(request, made, f"/instance-types/{made['id']}")


@router.post(
    "/instance-types/{instance_type_id}/retire",
    tags=["instance types"],
    response_model=api.InstanceTypePublic,
)
async def retire_instance_type(ctx: CtxDep, instance_type_id: UUID) -> Response:
    """Stop offering a size (running instances keep it) (admins)."""
    payload = {"instance_type_id": str(instance_type_id)}
    return json_response(await ctx.relay("inventory", "types.retire", payload))


@router.post("/admin/claims/repair", tags=["hosts"], response_model=api.RepairReport)
async def repair_claims(ctx: CtxDep) -> Response:
    """Recount host claims from the instances and fix drift now (admins)."""
    return json_response(await ctx.relay("inventory", "claims.repair", slow=True))

"""Instances (``rpc.inventory``): requests and lifecycle commands answer 202 with the instance as
it is now and its ``Location``; the change itself arrives as events (see ``/events/instances``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from compgrid_events import billing_api, metering_api
from compgrid_events import inventory_api as api
from compgrid_events.inventory import InstanceState
from compgrid_gateway import live
from compgrid_gateway.backend import CtxDep
from compgrid_gateway.problems import problem
from compgrid_gateway.routes.common import (
    accepted,
    body_of,
    json_response,
    location,
    problems,
    without,
)
from compgrid_gateway.streams import HeldStream

router = APIRouter(tags=["instances"], responses=problems())

Decision = without(api.Decide, "instance_id", name="Decision")
Denial = without(api.Deny, "instance_id", name="Denial")
Lease = without(api.SetLease, "instance_id", name="Lease")


def _at(request: Request, instance: dict[str, Any]) -> Response:
    return accepted(request, instance, f"/instances/{instance['id']}")


PAYMENT_REFUSALS = ("budget_", "currency_mismatch")
"""Reason codes of admission refusals that say the budget code cannot pay (402)."""


def _admitted(request: Request, instance: dict[str, Any]) -> Response:
    """202 for a request that was admitted (or waits for its PI); a refusal decided now is a
    problem: 402 when the budget code cannot pay, 409 otherwise (quota, capacity), with the
    reason and the rejected instance, which stays readable at ``Location``."""
    if instance["state"] != InstanceState.REJECTED:
        return _at(request, instance)
    code = instance.get("reason_code") or "rejected"
    url = location(request, f"/instances/{instance['id']}")
    return problem(
        402 if code.startswith(PAYMENT_REFUSALS) else 409,
        instance.get("reason") or "the request was refused at admission",
        code=code,
        instance=request.url.path,
        request_id=request.scope.get("state", {}).get("request_id"),
        headers={"Location": url},
        extensions={"instance_id": str(instance["id"]), "instance_url": url},
    )


@router.get("/instances", response_model=api.Page[api.InstancePublic])
async def list_instances(ctx: CtxDep, params: Annotated[api.ListInstances, Query()]) -> Response:
    """The instances the caller may see, filtered, sorted by creation, a page at a time
    (pass ``next_cursor`` back as ``after``)."""
    return json_response(await ctx.relay("inventory", "instances.list", params))


@router.post(
    "/instances", status_code=202, response_model=api.InstancePublic, responses=problems(402)
)
async def request_instance(request: Request, ctx: CtxDep, body: api.RequestInstance) -> Response:
    """Ask for an instance of a type; it is placed and started, or waits for the PI's approval.
    Refused at admission: 402 (budget) or 409 (quota, capacity) with the rejected instance.
    Send an ``Idempotency-Key`` so a retried request never creates two."""
    return _admitted(request, await ctx.ask("inventory", "instances.request", body))


@router.post(
    "/instances/by-requirements",
    status_code=202,
    response_model=api.InstancePublic,
    responses=problems(402),
)
async def request_by_requirements(
    request: Request, ctx: CtxDep, body: api.RequestByRequirements
) -> Response:
    """Ask for the cheapest type that meets the requirements and can be placed now (refusals
    at admission as for ``POST /instances``)."""
    answer = await ctx.ask("inventory", "instances.request_by_requirements", body)
    return _admitted(request, answer)


@router.get("/instances/{instance_id}", response_model=api.InstancePublic)
async def get_instance(ctx: CtxDep, instance_id: UUID) -> Response:
    """One instance."""
    payload = {"instance_id": str(instance_id)}
    return json_response(await ctx.relay("inventory", "instances.get", payload))


async def _act(request: Request, ctx: CtxDep, instance_id: UUID, operation: str) -> Response:
    payload = {"instance_id": str(instance_id)}
    return _at(request, await ctx.ask("inventory", operation, payload))


@router.post("/instances/{instance_id}/start", status_code=202, response_model=api.InstancePublic)
async def start_instance(request: Request, ctx: CtxDep, instance_id: UUID) -> Response:
    """Start a stopped instance."""
    return await _act(request, ctx, instance_id, "instances.start")


@router.post("/instances/{instance_id}/stop", status_code=202, response_model=api.InstancePublic)
async def stop_instance(request: Request, ctx: CtxDep, instance_id: UUID) -> Response:
    """Stop a running instance (its disk stays, and is charged)."""
    return await _act(request, ctx, instance_id, "instances.stop")


@router.post("/instances/{instance_id}/reboot", status_code=202, response_model=api.InstancePublic)
async def reboot_instance(request: Request, ctx: CtxDep, instance_id: UUID) -> Response:
    """Reboot a running instance."""
    return await _act(request, ctx, instance_id, "instances.reboot")


@router.delete("/instances/{instance_id}", status_code=202, response_model=api.InstancePublic)
async def delete_instance(request: Request, ctx: CtxDep, instance_id: UUID) -> Response:
    """Delete an instance and its disk."""
    return await _act(request, ctx, instance_id, "instances.delete")


@router.post("/instances/{instance_id}/approve", status_code=202, response_model=api.InstancePublic)
async def approve_instance(
    request: Request,
    ctx: CtxDep,
    instance_id: UUID,
    body: Decision | None = None,  # type: ignore[valid-type]
) -> Response:
    """Approve a request waiting for the project's PI."""
    payload = body_of(body, instance_id=instance_id)
    return _at(request, await ctx.ask("inventory", "instances.approve", payload))


@router.post("/instances/{instance_id}/deny", status_code=202, response_model=api.InstancePublic)
async def deny_instance(
    request: Request,
    ctx: CtxDep,
    instance_id: UUID,
    body: Denial,  # type: ignore[valid-type]
) -> Response:
    """Deny a waiting request; the reason goes to the requester."""
    payload = body_of(body, instance_id=instance_id)
    return _at(request, await ctx.ask("inventory", "instances.deny", payload))


@router.put("/instances/{instance_id}/lease", response_model=api.InstancePublic)
async def set_lease(ctx: CtxDep, instance_id: UUID, body: Lease) -> Response:  # type: ignore[valid-type]
    """Move the lease end (``null``: no lease)."""
    payload = body_of(body, instance_id=instance_id)
    return json_response(await ctx.relay("inventory", "instances.set_lease", payload))


@router.get("/instances/{instance_id}/usage", response_model=metering_api.UsageReport)
async def instance_usage(
    ctx: CtxDep,
    instance_id: UUID,
    since: Annotated[datetime | None, Query()] = None,
    until: Annotated[datetime | None, Query()] = None,
) -> Response:
    """The instance's usage hour by hour (default: the last 24 hours)."""
    query = metering_api.UsageQuery(
        of=metering_api.UsageOf.INSTANCE, id=instance_id, since=since, until=until
    )
    return json_response(await ctx.relay("metering", "usage.get", query))


@router.get("/instances/{instance_id}/costs", response_model=billing_api.InstanceCosts)
async def instance_costs(ctx: CtxDep, instance_id: UUID) -> Response:
    """What the instance has cost so far: its priced charges (the sums ``/costs`` answers) and
    billing's estimate for the running time in hours not priced yet."""
    payload = {"instance_id": str(instance_id)}
    return json_response(await ctx.relay("billing", "instances.costs", payload))


@router.get(
    "/events/instances",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-sent events: ``instance`` (the instance now, when one is "
            "named), ``state`` (a change), ``error`` (the stream ends)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def instance_events(
    request: Request, ctx: CtxDep, instance_id: Annotated[UUID | None, Query()] = None
) -> StreamingResponse:
    """Live state changes of the caller's instances (or of one), as server-sent events."""
    caller = ctx.principal()  # refuse a missing or bad token before the stream starts
    if instance_id is not None:
        await ctx.ask("inventory", "instances.get", {"instance_id": str(instance_id)})
    settings = request.app.state.settings
    slot = await request.app.state.streams.open(caller)  # 429 beyond the open-stream limits
    return HeldStream(
        slot,
        live.stream(request.app.state.hub, ctx, instance_id, settings.sse_keepalive_s),
        media_type="text/event-stream",
        headers={"X-Accel-Buffering": "no"},
    )

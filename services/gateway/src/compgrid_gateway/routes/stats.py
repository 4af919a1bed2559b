"""The owner's dashboard: capacity and claims per datacenter and host (``rpc.inventory``),
earnings over time, cost by instance type and the biggest spenders (``rpc.billing``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from compgrid_events import billing_api
from compgrid_events import inventory_api as api
from compgrid_gateway.backend import CtxDep
from compgrid_gateway.routes.common import json_response, problems

router = APIRouter(tags=["statistics"], responses=problems())


@router.get("/stats/utilisation", response_model=list[api.Utilisation])
async def utilisation(ctx: CtxDep, params: Annotated[api.UtilisationQuery, Query()]) -> Response:
    """Capacity, schedulable capacity and claims per datacenter (per host when asked)."""
    return json_response(await ctx.relay("inventory", "cluster.utilisation", params))


@router.get("/stats/billing", response_model=billing_api.BillingStats)
async def billing_stats(
    ctx: CtxDep, params: Annotated[billing_api.StatsQuery, Query()]
) -> Response:
    """Earnings per day, runtime and cost by instance type, top projects and users."""
    return json_response(await ctx.relay("billing", "stats.get", params, slow=True))

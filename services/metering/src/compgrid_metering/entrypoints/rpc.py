"""The metering service's request/reply operations (``rpc.metering.<operation>``)."""

from __future__ import annotations

from functools import partial

from compgrid_events import metering_api as api
from compgrid_metering.use_cases import queries
from compgrid_metering.use_cases.deps import Deps
from compgrid_runtime.rpc import RpcServer


def register_routes(rpc: RpcServer, deps: Deps) -> None:
    """Bind every operation to its use case with the service's ports."""
    rpc.route("usage.get", partial(queries.usage_report, deps), api.UsageQuery)

"""What the cluster offers: ``compgrid types`` (instance types) and ``compgrid prices`` (price
tiers). Everyone signed in may list them; creating them is for admins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from compgrid_cli import output
from compgrid_cli.client import Api
from compgrid_cli.commands.common import (
    JsonOpt,
    api,
    counts,
    is_uuid,
    iso,
    moment,
    pairs,
    usage_error,
)

types_app = typer.Typer(help="Instance types: the sizes researchers ask for.", no_args_is_help=True)
prices_app = typer.Typer(help="Price tiers and their rates.", no_args_is_help=True)

TYPE_COLUMNS: list[output.Column] = [
    ("NAME", lambda t: t["name"]),
    ("VCPUS", lambda t: t["vcpus"]),
    ("MEMORY MIB", lambda t: t["memory_mib"]),
    ("DISK GIB", lambda t: t["disk_gib"]),
    ("GPUS", lambda t: t.get("gpus")),
    ("PRICE/H", lambda t: output.money(t.get("hourly_price"))),
    ("TIER", lambda t: t.get("price_tier")),
    ("RETIRED", lambda t: output.when(t.get("retired_at")) if t.get("retired_at") else None),
    ("ID", lambda t: t["id"]),
]


def _rates(tier: output.Row) -> str:
    current = tier.get("current") or {}
    rates = current.get("rates") or {}
    gpu = ", ".join(f"{m} {r}" for m, r in (rates.get("gpu_hour") or {}).items())
    parts = [
        f"vCPU-h {rates.get('vcpu_hour', '-')}",
        f"GiB-h {rates.get('memory_gib_hour', '-')}",
        f"storage GiB-month {rates.get('storage_gib_month', '-')}",
    ]
    return "; ".join(parts + ([f"GPU-h {gpu}"] if gpu else []))


TIER_COLUMNS: list[output.Column] = [
    ("NAME", lambda t: t["name"]),
    ("CURRENCY", lambda t: t["currency"]),
    ("CURRENT RATES", _rates),
    ("FROM", lambda t: output.when((t.get("current") or {}).get("effective_from"))),
    ("ID", lambda t: t["id"]),
]


def resolve_tier(client: Api, value: str) -> str:
    """A price tier id from an id or its name."""
    if is_uuid(value):
        return value
    found = [t["id"] for t in client.get("/price-tiers") if t["name"] == value]
    if not found:
        raise usage_error(f"no price tier named {value!r}", field="price_tier")
    return str(found[0])


@types_app.command("list")
def list_types(
    ctx: typer.Context,
    retired: Annotated[bool, typer.Option("--retired", help="Include retired types.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """List instance types with their hourly price."""
    found = api(ctx).get("/instance-types", {"include_retired": retired or None})
    output.show(found, as_json, lambda ts: output.table(ts, TYPE_COLUMNS, empty="no types"))


@types_app.command("create")
def create_type(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="The type's name.")],
    vcpus: Annotated[int, typer.Option(min=1, help="vCPUs.")],
    memory_mib: Annotated[int, typer.Option(min=1, help="Memory in MiB.")],
    disk_gib: Annotated[int, typer.Option(min=0, help="Disk in GiB.")],
    price_tier: Annotated[str, typer.Option(help="Price tier id or name.")],
    gpu: Annotated[list[str] | None, typer.Option(help="GPUs model=count (repeatable).")] = None,
    system_type: Annotated[
        list[str] | None, typer.Option(help="Image system type it runs (repeatable; none: any).")
    ] = None,
    description: Annotated[str, typer.Option(help="What it is for.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Offer a new instance type, priced by a tier (admins)."""
    client = api(ctx)
    body = {
        "name": name,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "disk_gib": disk_gib,
        "price_tier_id": resolve_tier(client, price_tier),
        "gpus": counts(gpu, "--gpu"),
        "system_types": system_type or [],
        "description": description,
    }
    made = client.post("/instance-types", body)
    output.show(made, as_json, lambda t: output.table([t], TYPE_COLUMNS))


@prices_app.command("list")
def list_tiers(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List price tiers with their current rates."""
    found = api(ctx).get("/price-tiers")
    output.show(found, as_json, lambda ts: output.table(ts, TIER_COLUMNS, empty="no tiers"))


@prices_app.command("create")
def create_tier(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="The tier's name.")],
    currency: Annotated[str, typer.Option(help="ISO 4217 code, e.g. EUR.")],
    vcpu_hour: Annotated[str, typer.Option(help="Price of one vCPU for an hour.")],
    memory_gib_hour: Annotated[str, typer.Option(help="Price of one GiB of memory for an hour.")],
    storage_gib_month: Annotated[
        str, typer.Option(help="Price of one GiB of disk for a month.")
    ] = "0",
    gpu_hour: Annotated[
        list[str] | None, typer.Option(help="GPU price per hour, model=price (repeatable).")
    ] = None,
    effective_from: Annotated[
        str | None, typer.Option(help="When the rates apply from (default: now).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a price tier with its first rates (admins)."""
    rates = {
        "vcpu_hour": vcpu_hour,
        "memory_gib_hour": memory_gib_hour,
        "storage_gib_month": storage_gib_month,
        "gpu_hour": pairs(gpu_hour, "--gpu-hour"),
    }
    body = {
        "name": name,
        "currency": currency.upper(),
        "effective_from": moment(effective_from, "--effective-from") or iso(datetime.now(UTC)),
        "rates": rates,
    }
    made = api(ctx).post("/price-tiers", body)
    output.show(made, as_json, lambda t: output.table([t], TIER_COLUMNS))

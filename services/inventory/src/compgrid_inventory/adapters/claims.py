"""Atomic capacity claims on hosts.

``place`` runs one statement that picks the best active host that fits (read in weigher order
from ``ix_host_placement``), locks it — skipping hosts another transaction is claiming, so
concurrent requests spread over the next-best hosts — adds the demand to its claimed counters
and records the claim row (one per instance). Postgres re-checks the fit against the committed
row under the lock, and a check constraint refuses any overcommit, so two requests can never
both take the last capacity. Only hosts of a datacenter with a live provisioner worker are
claimed. When nothing fits, ``candidates`` lets the domain say why.
``release`` gives a claim back; both run inside the caller's transaction.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from compgrid_inventory.adapters.workers import live_in
from compgrid_inventory.domain.placement import (
    ANYWHERE,
    Constraints,
    Demand,
    HostView,
    NoPlacement,
    Strategy,
    rank,
)

CANDIDATES = 8

# In the order of HostView's fields.
_HOST_COLUMNS = """
    h.id, d.name AS datacenter, h.name, h.state, h.vcpus, h.memory_mib, h.disk_gib,
    h.cpu_overcommit, h.memory_overcommit, h.gpus, h.labels, h.claimed_vcpus,
    h.claimed_memory_mib, h.claimed_disk_gib, h.claimed_gpus
"""
_FITS = """
    h.free_vcpus >= :vcpus
    AND h.claimed_memory_mib + :memory_mib <= floor(h.memory_mib * h.memory_overcommit)
    AND h.claimed_disk_gib + :disk_gib <= h.disk_gib
"""
# Only datacenters with a live provisioner worker: nobody would create an instance elsewhere.
_SERVED = live_in("(SELECT name FROM inventory.datacenter WHERE id = h.datacenter_id)")
# The same test on an empty host: could this host ever take the demand?
_COULD_EVER_FIT = """
    floor(h.vcpus * h.cpu_overcommit) >= :vcpus
    AND floor(h.memory_mib * h.memory_overcommit) >= :memory_mib
    AND h.disk_gib >= :disk_gib
"""


def _order(strategy: Strategy) -> str:
    """The weighers of ``placement.rank`` in SQL, in the order of ``ix_host_placement``.

    Hosts without GPUs first (for GPU demands every candidate has GPUs, so it changes nothing),
    then fewest free vCPUs left (pack) or most (spread), then name.
    """
    direction = "ASC" if strategy is Strategy.PACK else "DESC"
    return f"h.has_gpus, h.free_vcpus {direction}, h.name"


def _gpu_params(gpus: Mapping[str, int], params: dict[str, Any]) -> int:
    """Bind ``gpu_model_<i>``/``gpu_count_<i>`` for each GPU model; return how many."""
    for index, (model, count) in enumerate(sorted(gpus.items())):
        params[f"gpu_model_{index}"] = model
        params[f"gpu_count_{index}"] = count
    return len(gpus)


def _gpu_filter(models: int, *, empty_host: bool = False) -> str:
    """SQL: the host has the bound GPU counts free (or in all, on an empty host).

    A demand for GPUs can only go to a host that has some, so it also says ``h.has_gpus``:
    that lets ``ix_host_placement`` skip every host without GPUs instead of reading each one.
    """
    if models == 0:
        return ""
    return " AND h.has_gpus" + "".join(
        f" AND coalesce((h.gpus ->> :gpu_model_{index})::int, 0)"
        + ("" if empty_host else f" - coalesce((h.claimed_gpus ->> :gpu_model_{index})::int, 0)")
        + f" >= :gpu_count_{index}"
        for index in range(models)
    )


def _claimed_gpus_after(models: int, *, giving_back: bool) -> str:
    """SQL for ``h.claimed_gpus`` once the bound GPU counts are added (or given back)."""
    expression = "h.claimed_gpus"
    for index in range(models):
        current = f"coalesce((h.claimed_gpus ->> :gpu_model_{index})::int, 0)"
        after = (
            f"greatest(0, {current} - :gpu_count_{index})"
            if giving_back
            else f"{current} + :gpu_count_{index}"
        )
        expression = (
            f"({expression} || jsonb_build_object(CAST(:gpu_model_{index} AS text), {after}))"
        )
    return expression


def _where(datacenter: bool, labels: bool) -> str:
    """SQL: the host is where the constraints allow (binds ``datacenter`` and ``labels``)."""
    where = " WHERE TRUE"
    if datacenter:
        where += (
            " AND h.datacenter_id = (SELECT id FROM inventory.datacenter WHERE name = :datacenter)"
        )
    if labels:
        where += " AND h.labels @> CAST(:labels AS jsonb)"
    return where


def _params(demand: Demand, constraints: Constraints) -> dict[str, Any]:
    """The bind parameters of a demand and its constraints."""
    params: dict[str, Any] = {
        "vcpus": demand.vcpus,
        "memory_mib": demand.memory_mib,
        "disk_gib": demand.disk_gib,
    }
    if constraints.datacenter is not None:
        params["datacenter"] = constraints.datacenter
    if constraints.labels:
        params["labels"] = json.dumps(dict(constraints.labels))
    _gpu_params(demand.gpus, params)
    return params


def _host(row: Any) -> HostView:
    return HostView(
        id=row.id,
        datacenter=row.datacenter,
        name=row.name,
        state=row.state,
        vcpus=row.vcpus,
        memory_mib=row.memory_mib,
        disk_gib=row.disk_gib,
        cpu_overcommit=row.cpu_overcommit,
        memory_overcommit=row.memory_overcommit,
        gpus=row.gpus,
        labels=row.labels,
        claimed_vcpus=row.claimed_vcpus,
        claimed_memory_mib=row.claimed_memory_mib,
        claimed_disk_gib=row.claimed_disk_gib,
        claimed_gpus=row.claimed_gpus,
        served=getattr(row, "served", True),
    )


async def candidates(
    session: AsyncSession, demand: Demand, constraints: Constraints, strategy: Strategy
) -> list[HostView]:
    """Return up to ``CANDIDATES`` hosts that fit now, best first (NoPlacement when none)."""
    params = _params(demand, constraints)
    params["limit"] = CANDIDATES
    where = _where(constraints.datacenter is not None, bool(constraints.labels))
    gpus = len(demand.gpus)
    fits = f"h.state = 'active' AND {_SERVED} AND {_FITS}{_gpu_filter(gpus)}"
    columns = f"{_HOST_COLUMNS}, {_SERVED} AS served"
    query = (
        f"SELECT {columns} FROM inventory.host h"
        " JOIN inventory.datacenter d ON d.id = h.datacenter_id"
        f"{where} AND {fits} ORDER BY {_order(strategy)} LIMIT :limit"
    )
    rows = (await session.execute(text(query), params)).all()
    if rows:
        return rank([_host(r) for r in rows], demand, constraints, strategy)
    # Nothing fits: say why. ``rank`` needs, of the eligible hosts, those that fit now (some
    # may have been freed since) or else one that could ever take the demand (then it is only
    # full) — so Postgres puts those first and only a few rows come back, not every host.
    why = (
        f"SELECT {columns} FROM inventory.host h"
        f" JOIN inventory.datacenter d ON d.id = h.datacenter_id{where}"
        f" ORDER BY ({fits}) DESC, {_SERVED} DESC,"
        f" ({_COULD_EVER_FIT}{_gpu_filter(gpus, empty_host=True)}) DESC,"
        f" {_order(strategy)} LIMIT :limit"
    )
    everything = (await session.execute(text(why), params)).all()
    return rank([_host(r) for r in everything], demand, constraints, strategy)


@functools.lru_cache(maxsize=256)
def _claim(
    datacenter: bool, labels: bool, gpus: int, strategy: Strategy, skip_locked: bool
) -> TextClause:
    """Pick, claim and record in one statement (cached per shape of request)."""
    where = _where(datacenter, labels)
    sql = (
        "WITH chosen AS ("
        f" SELECT h.id FROM inventory.host h{where} AND h.state = 'active' AND {_SERVED}"
        f" AND {_FITS}"
        f"{_gpu_filter(gpus)}"
        f" ORDER BY {_order(strategy)} LIMIT 1 FOR UPDATE OF h"
        f"{' SKIP LOCKED' if skip_locked else ''}),"
        " claimed AS ("
        " UPDATE inventory.host h SET"
        " claimed_vcpus = h.claimed_vcpus + :vcpus,"
        " claimed_memory_mib = h.claimed_memory_mib + :memory_mib,"
        " claimed_disk_gib = h.claimed_disk_gib + :disk_gib,"
        f" claimed_gpus = {_claimed_gpus_after(gpus, giving_back=False)},"
        " version = h.version + 1"
        " FROM chosen, inventory.datacenter d WHERE h.id = chosen.id AND d.id = h.datacenter_id"
        f" RETURNING {_HOST_COLUMNS}),"
        " recorded AS ("
        " INSERT INTO inventory.claim (id, host_id, vcpus, memory_mib, disk_gib, gpus)"
        " SELECT :instance_id, id, :vcpus, :memory_mib, :disk_gib, CAST(:gpus AS jsonb)"
        " FROM claimed)"
        " SELECT * FROM claimed"
    )
    return text(sql)


async def place(
    session: AsyncSession,
    instance_id: UUID,
    demand: Demand,
    constraints: Constraints = ANYWHERE,
    strategy: Strategy = Strategy.PACK,
    attempts: int = 5,
) -> HostView:
    """Choose a host and claim it for the instance; raise NoPlacement with the reason.

    One statement picks the best host that fits and is not being claimed by a concurrent
    transaction (``FOR UPDATE SKIP LOCKED``: concurrent requests spread over the next-best hosts
    instead of queueing on one row) and claims it. When nothing comes back, the domain looks at
    the eligible hosts to say why — or, when hosts fit but were all busy, it tries again.
    """
    params = _params(demand, constraints)
    params["instance_id"] = instance_id
    params["gpus"] = json.dumps(dict(demand.gpus))
    shape = (constraints.datacenter is not None, bool(constraints.labels), len(demand.gpus))
    for attempt in range(attempts):
        # The last attempt waits for busy hosts instead of skipping them, so a host that is
        # only being looked at by someone else is never reported as full.
        last = attempt == attempts - 1
        claim = _claim(*shape, strategy, skip_locked=not last)
        row = (await session.execute(claim, params)).first()
        if row is not None:
            return _host(row)
        await candidates(session, demand, constraints, strategy)  # raises with the reason
        await asyncio.sleep(0.005 * (attempt + 1))  # hosts fit but were being claimed
    raise NoPlacement("no_capacity", "no active host has enough free capacity right now")


async def release(session: AsyncSession, instance_id: UUID) -> bool:
    """Give an instance's claim back to its host; False when it held none (idempotent)."""
    gone = (
        await session.execute(
            text("DELETE FROM inventory.claim WHERE id = :id RETURNING *"), {"id": instance_id}
        )
    ).first()
    if gone is None:
        return False
    params: dict[str, Any] = {
        "host_id": gone.host_id,
        "vcpus": gone.vcpus,
        "memory_mib": gone.memory_mib,
        "disk_gib": gone.disk_gib,
    }
    gpu_set = _claimed_gpus_after(_gpu_params(gone.gpus, params), giving_back=True)
    await session.execute(
        text(
            "UPDATE inventory.host h SET"
            " claimed_vcpus = h.claimed_vcpus - :vcpus,"
            " claimed_memory_mib = h.claimed_memory_mib - :memory_mib,"
            " claimed_disk_gib = h.claimed_disk_gib - :disk_gib,"
            f" claimed_gpus = {gpu_set}, version = h.version + 1"
            " WHERE h.id = :host_id"
        ),
        params,
    )
    return True

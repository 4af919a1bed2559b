"""Datacenters and their provisioner workers through the REST API: ``GET /datacenters`` and
the owner's dashboard show each worker and when it was last heard from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.gateway.conftest import Stack, live_workers, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]


def seen_at(worker: dict[str, str]) -> datetime:
    """When a worker was last heard from."""
    return datetime.fromisoformat(worker["last_seen_at"])


async def test_datacenters_and_the_dashboard_show_each_worker_and_when_it_was_last_seen(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    first = live_workers(stack, "demo-dc")[0]
    assert datetime.now(UTC) - seen_at(first) < timedelta(seconds=30)
    assert seen_at(first) >= datetime.fromisoformat(first["started_at"])
    # heartbeats go on: the same worker is seen again later
    later = wait_for(
        lambda: [
            w
            for w in live_workers(stack, "demo-dc")
            if w["worker_id"] == first["worker_id"] and seen_at(w) > seen_at(first)
        ],
        30,
    )
    assert later

    researcher = await client.get("/datacenters", headers=stack.headers("researcher"))
    assert researcher.status_code == 200
    demo = next(dc for dc in researcher.json() if dc["name"] == "demo-dc")
    assert first["worker_id"] in {w["worker_id"] for w in demo["workers"]}

    dashboard = await client.get("/stats/utilisation", headers=stack.headers("admin"))
    assert dashboard.status_code == 200, dashboard.text
    shown = next(u for u in dashboard.json() if u["datacenter"] == "demo-dc")
    assert first["worker_id"] in {w["worker_id"] for w in shown["workers"] if w["live"]}

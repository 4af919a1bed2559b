"""The catalogue an operator keeps: effective-dated price tiers and the prices they give types,
retiring types, hosts and their state, who may write and read, utilisation, and how a
datacenter's placement weighing spreads or packs instances."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from compgrid_events.base import utc_now
from compgrid_events.inventory import (
    HostRegistered,
    InstanceScheduled,
    InstanceStartRequested,
    InstanceStopRequested,
    PriceTierChanged,
)
from compgrid_events.provisioner import InstanceStopped
from tests.harness.streams import StreamWatch
from tests.inventory.integration.conftest import (
    Commands,
    InventoryHarness,
    Lab,
    make_lab,
    report,
    started,
    state_of,
    tag,
    wait_state,
)

pytestmark = [pytest.mark.postgres, pytest.mark.nats]


def rates(vcpu: str, memory: str, storage: str = "0", **gpus: str) -> dict[str, Any]:
    return {
        "vcpu_hour": vcpu,
        "memory_gib_hour": memory,
        "storage_gib_month": storage,
        "gpu_hour": gpus,
    }


def same_rates(public: dict[str, Any], sent: dict[str, Any]) -> bool:
    return (
        Decimal(public["vcpu_hour"]) == Decimal(sent["vcpu_hour"])
        and Decimal(public["memory_gib_hour"]) == Decimal(sent["memory_gib_hour"])
        and Decimal(public["storage_gib_month"]) == Decimal(sent["storage_gib_month"])
        and {k: Decimal(v) for k, v in public["gpu_hour"].items()}
        == {k: Decimal(v) for k, v in sent["gpu_hour"].items()}
    )


def this_hour() -> datetime:
    """The start of the current UTC hour (rates change on whole hours)."""
    return utc_now().replace(minute=0, second=0, microsecond=0)


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def type_named(inventory: InventoryHarness, token: str, name: str, **body: Any) -> Any:
    listed = await inventory.call("types.list", body, token=token)
    found = [t for t in listed if t["name"] == name]
    return found[0] if found else None


# Price tiers and prices -------------------------------------------------------------------


async def test_rates_history_is_ordered_current_is_in_effect_and_each_change_is_published(
    inventory: InventoryHarness, lab: Lab
) -> None:
    now = this_hour()
    first_from, first = now - timedelta(days=1), rates("0.10", "0.01", "0.05")
    future_from, future = now + timedelta(days=30), rates("0.20", "0.02", "0.05")
    oldest_from, oldest = now - timedelta(days=60), rates("0.08", "0.008", "0.04")
    fix_from, fix = now - timedelta(hours=1), rates("0.11", "0.011", "0.05", a100="1.5")

    async with StreamWatch.of(inventory.nc, PriceTierChanged) as changes:
        tier = await inventory.call(
            "price_tiers.create",
            {
                "name": f"tier-{tag()}",
                "currency": "EUR",
                "effective_from": first_from.isoformat(),
                "rates": first,
            },
            token=lab.admin,
        )
        tier_id = tier["id"]
        assert same_rates(tier["current"]["rates"], first)

        later = await inventory.call(
            "price_tiers.add_rates",
            {"price_tier_id": tier_id, "effective_from": future_from.isoformat(), "rates": future},
            token=lab.admin,
        )
        assert same_rates(later["current"]["rates"], first), "future rates are not in effect yet"
        assert when(later["current"]["effective_from"]) == first_from

        older = await inventory.call(
            "price_tiers.add_rates",
            {"price_tier_id": tier_id, "effective_from": oldest_from.isoformat(), "rates": oldest},
            token=lab.admin,
        )
        assert same_rates(older["current"]["rates"], first), "an older entry is not the newest"
        fixed = await inventory.call(
            "price_tiers.add_rates",
            {"price_tier_id": tier_id, "effective_from": fix_from.isoformat(), "rates": fix},
            token=lab.admin,
        )
        assert same_rates(fixed["current"]["rates"], fix), "a correction from an hour ago applies"
        assert when(fixed["current"]["effective_from"]) == fix_from
        expected = [
            (oldest_from, oldest),
            (first_from, first),
            (fix_from, fix),
            (future_from, future),
        ]
        history = fixed["history"]
        assert [when(h["effective_from"]) for h in history] == [f for f, _ in expected]
        for entry, (_, sent) in zip(history, expected, strict=True):
            assert same_rates(entry["rates"], sent)

        clash = await inventory.refused(
            "price_tiers.add_rates",
            {"price_tier_id": tier_id, "effective_from": fix_from.isoformat(), "rates": first},
            token=lab.admin,
        )
        assert clash.status == 409
        assert clash.code == "rates_exist"
        assert clash.field == "effective_from"

        published = await changes.wait_settled(
            PriceTierChanged, where=lambda e: str(e.price_tier_id) == tier_id, count=4
        )
    assert len(published) == 4, "one event per change, none for the refused one"
    order = [first_from, future_from, oldest_from, fix_from]
    sent_in_order = [first, future, oldest, fix]
    for event, starts, sent in zip(published, order, sent_in_order, strict=True):
        assert event.effective_from == starts
        assert event.currency == "EUR"
        assert event.name == tier["name"]
        assert event.vcpu_hour_amount == Decimal(sent["vcpu_hour"])
        assert event.memory_gib_hour_amount == Decimal(sent["memory_gib_hour"])
        assert event.storage_gib_month_amount == Decimal(sent["storage_gib_month"])
        assert event.gpu_hour_amounts == {k: Decimal(v) for k, v in sent["gpu_hour"].items()}

    # A member reads it as the admin does, and the refused duplicate changed nothing.
    read = await inventory.call("price_tiers.get", {"price_tier_id": tier_id}, token=lab.member)
    assert len(read["history"]) == 4
    assert same_rates(read["current"]["rates"], fix)
    assert same_rates(read["history"][2]["rates"], fix)


async def test_types_show_the_hourly_price_their_tier_gives_now(
    inventory: InventoryHarness, lab: Lab
) -> None:
    # The lab's tier: vCPU 0.10/h, memory 0.01/GiB-h, storage 0.073/GiB-month, a100 2.00/h.
    # small: 2*0.10 + 2*0.01 + 10*0.073/730 = 0.221; big: 0.80 + 0.08 + 0.001 = 0.881;
    # gpu: 0.40 + 0.08 + 0.001 + 2.00 = 2.481.
    listed = {t["name"]: t for t in await inventory.call("types.list", {}, token=lab.member)}
    for name, price in ((lab.small, "0.221"), (lab.big, "0.881"), (lab.gpu, "2.481")):
        shown = listed[name]["hourly_price"]
        assert Decimal(shown["amount"]) == Decimal(price), name
        assert shown["currency"] == "EUR"
        assert Decimal(shown["amount"]).as_tuple().exponent == -6, "six decimal places"
        assert listed[name]["price_tier_id"] == lab.tier_id

    # Awkward numbers: 3*0.013 + 3000/1024*0.0071 + 17*0.0521/730 + 2*1.234567
    #   = 0.039 + 0.02080078125 + 0.00121328767... + 2.469134 = 2.53014806892... -> 2.530148
    tier = await inventory.call(
        "price_tiers.create",
        {
            "name": f"odd-{tag()}",
            "currency": "CHF",
            "effective_from": (this_hour() - timedelta(days=1)).isoformat(),
            "rates": rates("0.013", "0.0071", "0.0521", b200="1.234567"),
        },
        token=lab.admin,
    )
    name = f"odd-{tag()}"
    created = await inventory.call(
        "types.create",
        {
            "name": name,
            "vcpus": 3,
            "memory_mib": 3000,
            "disk_gib": 17,
            "gpus": {"b200": 2},
            "price_tier_id": tier["id"],
        },
        token=lab.admin,
    )
    assert created["hourly_price"] == {"amount": "2.530148", "currency": "CHF"}
    shown = await type_named(inventory, lab.member, name)
    assert shown["hourly_price"] == {"amount": "2.530148", "currency": "CHF"}

    # New rates from now on change the price shown; the rates are the tier's, not the type's.
    await inventory.call(
        "price_tiers.add_rates",
        {
            "price_tier_id": tier["id"],
            "effective_from": this_hour().isoformat(),
            "rates": rates("0.02", "0.0071", "0.0521", b200="1.234567"),
        },
        token=lab.admin,
    )
    repriced = await type_named(inventory, lab.member, name)
    assert Decimal(repriced["hourly_price"]["amount"]) == Decimal("2.551148")


async def test_rates_that_start_inside_an_hour_are_refused_and_change_nothing(
    inventory: InventoryHarness, lab: Lab
) -> None:
    """Billing prices an hour at the rates in effect at its start: a change at 16:30 would be
    applied from 17:00, so it is refused instead of being applied other than it says."""
    before = await inventory.call(
        "price_tiers.get", {"price_tier_id": lab.tier_id}, token=lab.admin
    )
    for moment in (this_hour() + timedelta(minutes=30), this_hour() + timedelta(seconds=1)):
        bodies: list[tuple[str, dict[str, Any]]] = [
            ("price_tiers.add_rates", {"price_tier_id": lab.tier_id}),
            ("price_tiers.create", {"name": f"half-{tag()}", "currency": "EUR"}),
        ]
        for operation, body in bodies:
            body |= {"effective_from": moment.isoformat(), "rates": rates("1", "1")}
            error = await inventory.refused(operation, body, token=lab.admin)
            assert (error.status, error.code, error.field) == (
                422,
                "not_whole_hour",
                "effective_from",
            )
            assert "whole UTC hour" in error.message
    after = await inventory.call("price_tiers.get", {"price_tier_id": lab.tier_id}, token=lab.admin)
    assert after == before


async def test_a_gpu_type_needs_a_rate_for_its_gpu_model(
    inventory: InventoryHarness, lab: Lab
) -> None:
    name = f"h100-{tag()}"
    error = await inventory.refused(
        "types.create",
        {
            "name": name,
            "vcpus": 8,
            "memory_mib": 16384,
            "disk_gib": 50,
            "gpus": {"h100": 1},
            "price_tier_id": lab.tier_id,
        },
        token=lab.admin,
    )
    assert error.status == 422
    assert error.code == "gpu_rate_missing"
    assert error.field == "gpus"
    assert await type_named(inventory, lab.admin, name, include_retired=True) is None


async def test_new_rates_must_keep_pricing_the_gpus_of_the_tiers_types(
    inventory: InventoryHarness, lab: Lab
) -> None:
    """The lab's tier prices its GPU type's a100; rates without an a100 rate would leave that
    type without a price (and its requests failing), so they are refused like such a type."""
    error = await inventory.refused(
        "price_tiers.add_rates",
        {
            "price_tier_id": lab.tier_id,
            "effective_from": this_hour().isoformat(),
            "rates": rates("0.10", "0.01", "0.073"),
        },
        token=lab.admin,
    )
    assert error.status == 422
    assert error.code == "gpu_rate_missing"
    tier = await inventory.call("price_tiers.get", {"price_tier_id": lab.tier_id}, token=lab.admin)
    assert len(tier["history"]) == 1
    gpu = await type_named(inventory, lab.member, lab.gpu)
    assert gpu["hourly_price"] == {"amount": "2.481000", "currency": "EUR"}
    requested = await inventory.call(
        "instances.request", lab.request(instance_type=lab.gpu), token=lab.member
    )
    assert requested["state"] == "scheduled"


async def test_a_retired_type_takes_no_new_instances_but_its_instances_keep_running(
    inventory: InventoryHarness, lab: Lab, commands: Commands
) -> None:
    created = await inventory.call("instances.request", lab.request(), token=lab.member)
    iid = created["id"]
    scheduled = await commands.wait_for(InstanceScheduled, iid)
    await inventory.publish(started(scheduled))
    running = await wait_state(inventory, lab, iid, "running")
    small = await type_named(inventory, lab.member, lab.small)
    assert small["retired_at"] is None

    denied = await inventory.refused(
        "types.retire", {"instance_type_id": small["id"]}, token=lab.pi
    )
    assert denied.status == 403
    retired = await inventory.call(
        "types.retire", {"instance_type_id": small["id"]}, token=lab.admin
    )
    assert retired["retired_at"] is not None
    again = await inventory.call("types.retire", {"instance_type_id": small["id"]}, token=lab.admin)
    assert again["retired_at"] == retired["retired_at"], "retiring twice keeps the first date"

    assert await type_named(inventory, lab.member, lab.small) is None
    listed = await type_named(inventory, lab.member, lab.small, include_retired=True)
    assert listed is not None
    assert listed["retired_at"] == retired["retired_at"]
    assert await type_named(inventory, lab.member, lab.big) is not None

    refused = await inventory.refused("instances.request", lab.request(), token=lab.member)
    assert refused.status == 409
    assert refused.code == "type_retired"
    assert refused.field == "instance_type"
    by_id = await inventory.refused(
        "instances.request", lab.request(instance_type=small["id"]), token=lab.member
    )
    assert by_id.code == "type_retired"

    await asyncio.sleep(0.3)
    now = await state_of(inventory, lab, iid)
    assert now["state"] == "running"
    assert now["version"] == running["version"]
    assert not await commands.matching(InstanceStopRequested, iid)
    # Its instances still stop and start again: that is not a new instance.
    await inventory.call("instances.stop", {"instance_id": iid}, token=lab.member)
    await inventory.publish(report(InstanceStopped, scheduled, stopped_at=utc_now()))
    await wait_state(inventory, lab, iid, "stopped")
    restarted = await inventory.call("instances.start", {"instance_id": iid}, token=lab.member)
    assert restarted["state"] == "starting"
    await commands.wait_for(InstanceStartRequested, iid)


# Hosts ------------------------------------------------------------------------------------


async def test_hosts_are_announced_and_guarded(
    inventory: InventoryHarness, lab: Lab, commands: Commands
) -> None:
    subject = HostRegistered.subject_for(datacenter=lab.datacenter)
    async with StreamWatch(inventory.nc, "INVENTORY", subject) as announced:
        added = await inventory.call(
            "hosts.register",
            {
                "datacenter": lab.datacenter,
                "name": "h9",
                "libvirt_uri": "qemu+ssh://h9.example.org/system",
                "vcpus": 12,
                "memory_mib": 49152,
                "disk_gib": 800,
                "cpu_overcommit": "2.0",
                "labels": {"rack": "r9"},
            },
            token=lab.admin,
        )
        assert added["version"] == 1
        assert added["state"] == "active"
        h9 = added["id"]
        [registered] = await announced.wait_settled(
            HostRegistered, where=lambda e: str(e.host_id) == h9
        )
        assert registered.name == "h9"
        assert registered.datacenter == lab.datacenter
        assert registered.libvirt_uri == "qemu+ssh://h9.example.org/system"
        assert registered.state.value == "active"
        assert registered.labels == {"rack": "r9"}
        assert registered.version == 1
        assert registered.capacity.vcpus == 12
        assert registered.capacity.memory_mib == 49152
        assert registered.capacity.disk_gib == 800
        assert registered.capacity.gpus == ()

        paused = await inventory.call(
            "hosts.update",
            {"host_id": h9, "expected_version": 1, "state": "maintenance"},
            token=lab.admin,
        )
        assert paused["state"] == "maintenance"
        assert paused["version"] == 2
        stale = await inventory.refused(
            "hosts.update",
            {"host_id": h9, "expected_version": 1, "state": "active", "labels": {}},
            token=lab.admin,
        )
        assert stale.status == 409
        assert stale.code == "version_mismatch"
        events = await announced.wait_settled(
            HostRegistered, where=lambda e: str(e.host_id) == h9, count=2
        )
        assert [(e.version, e.state.value) for e in events] == [(1, "active"), (2, "maintenance")]
    unchanged = await inventory.call("hosts.get", {"host_id": h9}, token=lab.admin)
    assert (unchanged["state"], unchanged["version"], unchanged["labels"]) == (
        "maintenance",
        2,
        {"rack": "r9"},
    )

    # h0 (first choice of pack) in maintenance: no new instance goes there.
    h0 = lab.hosts["h0"]
    await inventory.call("hosts.update", {"host_id": h0, "state": "maintenance"}, token=lab.admin)
    hosts = []
    for _ in range(2):
        created = await inventory.call("instances.request", lab.request(), token=lab.member)
        hosts.append((await commands.wait_for(InstanceScheduled, created["id"])).host)
    assert "h0" not in hosts
    assert "h9" not in hosts
    assert hosts == ["h1", "h1"]
    assert (await inventory.call("hosts.get", {"host_id": h0}, token=lab.admin))[
        "claimed_vcpus"
    ] == 0

    # h1 now has 4 vCPU and 4 GiB claimed: it cannot shrink below that.
    h1 = lab.hosts["h1"]
    before = await inventory.call("hosts.get", {"host_id": h1}, token=lab.admin)
    assert (before["claimed_vcpus"], before["claimed_memory_mib"]) == (4, 4096)
    for change, field in (
        ({"vcpus": 3}, "vcpus"),
        ({"memory_mib": 4095}, "memory_mib"),
        ({"disk_gib": 19}, "disk_gib"),
    ):
        error = await inventory.refused("hosts.update", {"host_id": h1, **change}, token=lab.admin)
        assert error.status == 409
        assert error.code == "capacity_in_use"
        assert error.field == field
    after = await inventory.call("hosts.get", {"host_id": h1}, token=lab.admin)
    assert after == before, "a refused change changes nothing"
    exact = await inventory.call("hosts.update", {"host_id": h1, "vcpus": 4}, token=lab.admin)
    assert exact["vcpus"] == 4, "shrinking to exactly what is claimed is fine"
    assert exact["version"] == before["version"] + 1


async def test_a_gpu_host_must_name_each_gpus_pci_device(
    inventory: InventoryHarness, lab: Lab, db: asyncpg.Connection
) -> None:
    """The provisioner passes GPUs through by PCI address: a host whose labels do not list
    one per GPU is refused, at registration and at every change, and nothing changes."""
    base = {
        "datacenter": lab.datacenter,
        "name": "g9",
        "libvirt_uri": "qemu+ssh://g9.example.org/system",
        "vcpus": 16,
        "memory_mib": 65536,
        "disk_gib": 1000,
        "gpus": {"h100": 2},
    }
    for labels, says in (
        ({}, "must list their 2 PCI address(es)"),
        ({"gpu.pci.h100": "0000:81:00.0"}, "it lists 1"),
        ({"gpu.pci.h100": "0000:81:00.0,slot-2"}, "'slot-2' is not a PCI address"),
        ({"gpu.pci.h100": "0000:81:00.0,0000:81:00.0"}, "twice"),
        (
            {"gpu.pci.h100": "0000:81:00.0,0000:82:00.0", "gpu.pci.a100": "0000:c1:00.0"},
            "a GPU model the host does not have",
        ),
    ):
        error = await inventory.refused(
            "hosts.register", {**base, "labels": labels}, token=lab.admin
        )
        assert (error.status, error.code, error.field) == (422, "gpu_devices", "labels")
        assert says in error.message, error.message
    assert not await db.fetchval("SELECT count(*) FROM inventory.host WHERE name = 'g9'")

    devices = {"gpu.pci.h100": "0000:81:00.0, 0000:82:00.0"}
    added = await inventory.call("hosts.register", {**base, "labels": devices}, token=lab.admin)
    changes: list[dict[str, Any]] = [
        {"labels": {}},
        {"gpus": {"h100": 3}},
        {"labels": {"rack": "r1"}},
    ]
    for change in changes:
        error = await inventory.refused(
            "hosts.update", {"host_id": added["id"], **change}, token=lab.admin
        )
        assert error.code == "gpu_devices"
    kept = await inventory.call("hosts.get", {"host_id": added["id"]}, token=lab.admin)
    assert (kept["version"], kept["labels"], kept["gpus"]) == (1, devices, {"h100": 2})
    # fewer GPUs with their devices listed is a valid change
    smaller = await inventory.call(
        "hosts.update",
        {"host_id": added["id"], "gpus": {"h100": 1}, "labels": {"gpu.pci.h100": "0000:81:00.0"}},
        token=lab.admin,
    )
    assert smaller["version"] == 2


async def test_catalogue_writes_are_for_admins_and_reads_for_everyone_signed_in(
    inventory: InventoryHarness, lab: Lab
) -> None:
    small = await type_named(inventory, lab.admin, lab.small)
    name = f"x-{tag()}"
    writes: list[tuple[str, dict[str, Any]]] = [
        ("datacenters.create", {"name": name}),
        ("datacenters.update", {"datacenter": lab.datacenter, "placement": "spread"}),
        (
            "hosts.register",
            {
                "datacenter": lab.datacenter,
                "name": name,
                "libvirt_uri": "test:///default",
                "vcpus": 4,
                "memory_mib": 4096,
                "disk_gib": 40,
            },
        ),
        ("hosts.update", {"host_id": lab.hosts["h0"], "state": "maintenance"}),
        ("images.create", {"name": name, "system_type": "linux", "source": "/images/x.qcow2"}),
        (
            "price_tiers.create",
            {
                "name": name,
                "currency": "EUR",
                "effective_from": this_hour().isoformat(),
                "rates": rates("1", "1"),
            },
        ),
        (
            "price_tiers.add_rates",
            {
                "price_tier_id": lab.tier_id,
                "effective_from": (this_hour() - timedelta(hours=1)).isoformat(),
                "rates": rates("9", "9"),
            },
        ),
        (
            "types.create",
            {
                "name": name,
                "vcpus": 1,
                "memory_mib": 512,
                "disk_gib": 5,
                "price_tier_id": lab.tier_id,
            },
        ),
        ("types.retire", {"instance_type_id": small["id"]}),
    ]
    for token in (lab.pi, lab.member, lab.finance, lab.outsider):
        for operation, body in writes:
            error = await inventory.refused(operation, body, token=token)
            assert error.status == 403, (operation, error.status, error.code)
    for operation in ("hosts.list", "cluster.utilisation"):
        for token in (lab.pi, lab.member, lab.finance):
            assert (await inventory.refused(operation, {}, token=token)).status == 403
    refused = await inventory.refused("hosts.get", {"host_id": lab.hosts["h0"]}, token=lab.pi)
    assert refused.status == 403
    assert (await inventory.refused("types.list", {}, token="")).status == 401

    # Nothing above took effect.
    centres = await inventory.call("datacenters.list", {}, token=lab.member)
    assert name not in [d["name"] for d in centres]
    mine = [d for d in centres if d["name"] == lab.datacenter]
    assert len(mine) == 1
    assert mine[0]["placement"] == "pack"
    assert mine[0]["hosts"] == 3
    images = await inventory.call("images.list", {}, token=lab.member)
    assert lab.image in [i["name"] for i in images]
    assert name not in [i["name"] for i in images]
    types = {t["name"] for t in await inventory.call("types.list", {}, token=lab.member)}
    assert {lab.small, lab.big, lab.gpu} <= types
    assert name not in types
    tiers = await inventory.call("price_tiers.list", {}, token=lab.outsider)
    assert name not in [t["name"] for t in tiers]
    [ours] = [t for t in tiers if t["id"] == lab.tier_id]
    assert len(ours["history"]) == 1
    tier = await inventory.call(
        "price_tiers.get", {"price_tier_id": lab.tier_id}, token=lab.finance
    )
    assert tier == ours
    h0 = await inventory.call("hosts.get", {"host_id": lab.hosts["h0"]}, token=lab.admin)
    assert (h0["state"], h0["version"]) == ("active", 1)
    listed = await inventory.call("hosts.list", {"datacenter": lab.datacenter}, token=lab.admin)
    assert [h["name"] for h in listed["items"]] == ["gpu0", "h0", "h1"]


async def test_utilisation_sums_capacity_and_claims(
    inventory: InventoryHarness, lab: Lab, commands: Commands
) -> None:
    placed: list[str] = []
    for kind in ("small", "small", "small", "gpu"):
        created = await inventory.call(
            "instances.request", lab.request(instance_type=getattr(lab, kind)), token=lab.member
        )
        placed.append((await commands.wait_for(InstanceScheduled, created["id"])).host)
    assert placed == ["h0", "h0", "h0", "gpu0"]

    [total] = await inventory.call(
        "cluster.utilisation", {"datacenter": lab.datacenter}, token=lab.admin
    )
    workers = total.pop("workers")
    assert [(w["worker_id"], w["live"]) for w in workers] == [(f"played-{lab.datacenter}", True)]
    assert total == {
        "datacenter": lab.datacenter,
        "hosts": 3,
        "active_hosts": 3,
        "vcpus": 8 + 8 + 16,
        "vcpus_schedulable": 32,
        "vcpus_claimed": 3 * 2 + 4,
        "memory_mib": 32768 * 2 + 65536,
        "memory_mib_schedulable": 131072,
        "memory_mib_claimed": 3 * 2048 + 8192,
        "disk_gib": 500 + 500 + 1000,
        "disk_gib_claimed": 4 * 10,
        "gpus": {"a100": 2},
        "gpus_claimed": {"a100": 1},
        "instances_by_state": {"scheduled": 4},
    }

    await inventory.call(
        "hosts.update", {"host_id": lab.hosts["h1"], "state": "maintenance"}, token=lab.admin
    )
    per_host = await inventory.call(
        "cluster.utilisation", {"datacenter": lab.datacenter, "per_host": True}, token=lab.admin
    )
    by_key = {u["datacenter"]: u for u in per_host}
    assert set(by_key) == {f"{lab.datacenter}/{h}" for h in ("h0", "h1", "gpu0")}
    h0, h1, gpu0 = (by_key[f"{lab.datacenter}/{h}"] for h in ("h0", "h1", "gpu0"))
    assert (h0["vcpus_claimed"], h0["memory_mib_claimed"], h0["instances_by_state"]) == (
        6,
        6144,
        {"scheduled": 3},
    )
    assert (h1["active_hosts"], h1["vcpus_schedulable"], h1["vcpus_claimed"]) == (0, 0, 0)
    assert (gpu0["vcpus_claimed"], gpu0["gpus_claimed"]) == (4, {"a100": 1})
    [after] = await inventory.call(
        "cluster.utilisation", {"datacenter": lab.datacenter}, token=lab.admin
    )
    assert (after["active_hosts"], after["vcpus_schedulable"]) == (2, 24)
    everywhere = await inventory.call("cluster.utilisation", {}, token=lab.admin)
    assert after in everywhere


# Placement weighing -----------------------------------------------------------------------


async def test_spread_puts_instances_on_different_hosts_and_pack_on_the_same(
    inventory: InventoryHarness, db: asyncpg.Connection
) -> None:
    lab = await make_lab(inventory, db, hosts=3)
    async with Commands(inventory.nc, lab.datacenter) as watcher:

        async def two(placement: str) -> list[str]:
            """Weigh by ``placement`` from now on, request two instances; return their hosts."""
            changed = await inventory.call(
                "datacenters.update",
                {"datacenter": lab.datacenter, "placement": placement},
                token=lab.admin,
            )
            assert changed["placement"] == placement
            hosts = []
            for _ in range(2):
                created = await inventory.call("instances.request", lab.request(), token=lab.member)
                hosts.append((await watcher.wait_for(InstanceScheduled, created["id"])).host)
            return hosts

        spread_hosts = await two("spread")
        assert len(set(spread_hosts)) == 2, spread_hosts
        assert "gpu0" not in spread_hosts, "GPU hosts come last"

        pack_hosts = await two("pack")
        assert len(set(pack_hosts)) == 1, pack_hosts
        assert pack_hosts[0] in spread_hosts, "pack fills a host that is in use already"

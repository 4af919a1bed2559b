"""Placement filters and weighers, without servers."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from compgrid_inventory.domain.placement import (
    Constraints,
    Demand,
    HostView,
    NoPlacement,
    Strategy,
    rank,
)


def host(name: str, **kw: object) -> HostView:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "datacenter": "dc1",
        "name": name,
        "state": "active",
        "vcpus": 16,
        "memory_mib": 65536,
        "disk_gib": 1000,
        "cpu_overcommit": Decimal("1.0"),
        **kw,
    }
    return HostView(**values)  # type: ignore[arg-type]


SMALL = Demand(vcpus=2, memory_mib=4096, disk_gib=20)


def test_pack_prefers_the_fullest_host_and_spread_the_emptiest() -> None:
    busy = host("busy", claimed_vcpus=12, claimed_memory_mib=8192)
    idle = host("idle")
    assert [h.name for h in rank([idle, busy], SMALL, strategy=Strategy.PACK)] == ["busy", "idle"]
    assert [h.name for h in rank([idle, busy], SMALL, strategy=Strategy.SPREAD)] == [
        "idle",
        "busy",
    ]


def test_overcommit_lets_more_vcpus_on_a_host_but_never_more_memory_than_allowed() -> None:
    shared = host("shared", cpu_overcommit=Decimal("4.0"), claimed_vcpus=60)
    assert rank([shared], Demand(vcpus=4, memory_mib=1024, disk_gib=0))  # 64 = 16 vCPU at 4.0
    with pytest.raises(NoPlacement) as full:
        rank([shared], Demand(vcpus=5, memory_mib=1024, disk_gib=0))
    assert full.value.code == "no_capacity"
    memory = host("memory", claimed_memory_mib=65536 - 1024)
    with pytest.raises(NoPlacement):
        rank([memory], Demand(vcpus=1, memory_mib=2048, disk_gib=0))


def test_gpus_are_matched_by_model_and_count() -> None:
    a100 = host("a100", gpus={"a100": 2}, claimed_gpus={"a100": 1})
    t4 = host("t4", gpus={"t4": 4})
    want = Demand(vcpus=4, memory_mib=8192, disk_gib=50, gpus={"a100": 1})
    assert [h.name for h in rank([a100, t4], want)] == ["a100"]
    with pytest.raises(NoPlacement) as busy:
        rank([a100, t4], Demand(vcpus=4, memory_mib=8192, disk_gib=50, gpus={"a100": 2}))
    assert busy.value.code == "no_capacity"  # two exist, one is taken
    with pytest.raises(NoPlacement) as never:
        rank([a100, t4], Demand(vcpus=4, memory_mib=8192, disk_gib=50, gpus={"h100": 1}))
    assert never.value.code == "too_large"


def test_hosts_not_active_take_no_new_work_and_the_reason_says_not_now() -> None:
    hosts = [host("m", state="maintenance"), host("d", state="down")]
    with pytest.raises(NoPlacement) as refused:
        rank(hosts, SMALL)
    assert refused.value.code == "no_capacity"


def test_a_request_larger_than_any_host_says_so() -> None:
    with pytest.raises(NoPlacement) as refused:
        rank([host("h")], Demand(vcpus=64, memory_mib=1024, disk_gib=0))
    assert refused.value.code == "too_large"
    assert "large enough" in refused.value.reason


def test_datacenter_and_labels_filter_with_a_reason_naming_them() -> None:
    ssd = host("ssd", labels={"disk": "ssd"})
    other = host("other", datacenter="dc2", labels={"disk": "ssd"})
    chosen = rank([ssd, other], SMALL, Constraints(datacenter="dc2", labels={"disk": "ssd"}))
    assert [h.name for h in chosen] == ["other"]
    with pytest.raises(NoPlacement) as refused:
        rank([ssd], SMALL, Constraints(labels={"gpu": "a100"}))
    assert refused.value.code == "no_matching_host"
    assert "gpu=a100" in refused.value.reason


def test_datacenters_no_live_worker_serves_are_skipped_and_the_reason_names_them() -> None:
    unserved = host("idle", datacenter="dc2", served=False)
    busy = host("busy", claimed_vcpus=15)
    with pytest.raises(NoPlacement) as refused:
        rank([unserved], SMALL, Constraints(datacenter="dc2"))
    assert refused.value.code == "no_provisioner"
    assert refused.value.reason == "no provisioner is running for datacenter dc2"
    with pytest.raises(NoPlacement) as full:
        rank([unserved, busy], SMALL)  # room only where nobody would create the instance
    assert full.value.code == "no_capacity"
    assert [h.name for h in rank([unserved, host("free")], SMALL)] == ["free"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vcpus": 0, "memory_mib": 1, "disk_gib": 0},
        {"vcpus": 1, "memory_mib": 0, "disk_gib": 0},
        {"vcpus": 1, "memory_mib": 1, "disk_gib": -1},
        {"vcpus": 1, "memory_mib": 1, "disk_gib": 0, "gpus": {"a100": 0}},
    ],
)
def test_absurd_demands_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"at least 1 vCPU|must be positive"):
        Demand(**kwargs)  # type: ignore[arg-type]


def test_work_without_gpus_keeps_off_gpu_hosts_while_others_fit() -> None:
    gpu_host = host("gpu", gpus={"a100": 4}, claimed_vcpus=8)  # fuller: pack would pick it
    plain = host("plain")
    assert [h.name for h in rank([gpu_host, plain], SMALL)] == ["plain", "gpu"]
    want_gpu = Demand(vcpus=2, memory_mib=4096, disk_gib=20, gpus={"a100": 1})
    assert [h.name for h in rank([gpu_host, plain], want_gpu)] == ["gpu"]

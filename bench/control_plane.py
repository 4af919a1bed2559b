"""Instances per second from request to ``running``, against a raw 4-hop JetStream chain.

Setup, one process on fresh servers (``bench_servers``): the auth, inventory and provisioner
services in-process with their schemas migrated and every stream in place. Through
``rpc.auth.*``: an admin, a PI and a member, one project with both, and one budget code funded
far beyond the run. Through ``rpc.inventory.*``: one datacenter with enough hosts for every
instance of the run (9 for the default run) of 128 vCPU, 128 GiB and 2,000 GiB of disk, an image,
a price tier and a tiny type (1 vCPU, 512 MiB, 1 GiB disk). The hosts are simulated libvirt
hosts (``test:///path.xml`` node files) driven by one provisioner worker for the datacenter.

Ours: ``REQUESTS`` instances (default 1,000), exactly ``IN_FLIGHT`` = 32 in flight. Each one is
``instances.request`` called over NATS request/reply as the member (as the gateway forwards
it): admission (quota, budget hold, placement on a host) commits ``scheduled``; the outbox
relay publishes ``InstanceScheduled``; the provisioner's durable consumer creates and starts
the domain on its host (copy-on-write disk, cloud-init seed) and reports ``InstanceStarted``;
the inventory's consumer moves the instance to ``running`` and publishes
``InstanceStateChanged``. An instance's latency runs from the call until that ``running`` state
change reaches a core-NATS subscriber of ``inventory.instance.state_changed`` (opened before the
run); then its slot takes the next request. 32 requests warm everything up first, uncounted.
An instance that ends ``rejected`` or ``failed``, an error reply or an instance not running
within 120 s counts in ``errors``: a valid run has none.

Settings are the services' production defaults, except: logs at WARNING (as every bench),
no default project quota (``default_max_*`` = None: 1,000 instances in one project exceed the
default 20), and the provisioner's usage ticks and reconcile every 60 s (not part of what is
measured; ticks default to 60 s anyway).

Baseline, same run, same NATS server, before the services start: a raw nats-py chain of four
JetStream hops with no logic and no database. The client publishes to ``benchchain.hop0`` and
awaits the ack; three relays each pull from their durable consumer on one hop (nats-py
``fetch``, the pull loop the services use), publish the message to the next hop awaiting the
ack, and ack it; the client sees ``benchchain.hop3`` arrive on a core-NATS subscription, as
ours sees the state change. Four JetStream publishes per request, the same number of requests,
the same 32 in flight, the same warm-up. The stream (``BENCHCHAIN``) is deleted afterwards.

Fields: ``value`` instances/s; ``baseline`` chain requests/s; ``ratio`` = value ÷ baseline;
``p50_ms``/``p99_ms`` request → running; ``baseline_p50_ms``/``baseline_p99_ms`` of the chain;
``p50_ratio`` = baseline_p50 ÷ p50 and ``p99_ratio`` likewise (targets ≥ 0.1, with ≥ 100
instances/s). ``stages_p50_ms`` says where an instance's time goes: the median time from the
call until the reply (``reply``), the ``InstanceScheduled`` command on the bus (``command``),
the provisioner's ``InstanceStarted`` on the bus (``started``) and ``running`` (``running``),
each seen by core-NATS subscribers.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

from bench.common import bench_servers, percentile, report
from compgrid_auth.bootstrap import build as build_auth
from compgrid_auth.config import Settings as AuthSettings
from compgrid_events.streams import ALL_STREAMS
from compgrid_inventory.bootstrap import build as build_inventory
from compgrid_inventory.config import Settings as InventorySettings
from compgrid_provisioner.adapters.simulated import SimulatedHost, write_hosts
from compgrid_provisioner.bootstrap import build as build_provisioner
from compgrid_provisioner.config import Settings as ProvisionerSettings
from compgrid_runtime.errors import DomainError
from compgrid_runtime.logs import configure_logging
from compgrid_runtime.migrations import upgrade
from compgrid_runtime.rpc import call
from compgrid_runtime.streams import ensure_streams

REQUESTS = int(os.environ.get("COMPGRID_BENCH_INSTANCES", "1000"))
WARMUP = 32
IN_FLIGHT = 32
HOST_VCPUS = 128
HOST_DISK_GIB = 2000
HOSTS = max(8, -(-(REQUESTS + WARMUP) // HOST_VCPUS))
DATACENTER = "bench-dc"
STORAGE_POOL = "compgrid"  # the provisioner's default pool name
RUNNING_TIMEOUT_S = 120.0
ADMIN = "bench-admin@example.org"
PASSWORD = "bench password, long enough"
CHAIN_STREAM = "BENCHCHAIN"
CHAIN_HOPS = 4
CHAIN_PADDING = "x" * 512  # about the size of an InstanceScheduled command

STATE_CHANGED = "inventory.instance.state_changed"
COMMAND = f"provision.{DATACENTER}.instance.scheduled"
STARTED = f"provisioner.{DATACENTER}.instance.started"
FINAL = {"running", "rejected", "failed", "deleted"}


def log(message: str) -> None:
    """Progress to stderr (stdout carries only the JSON line)."""
    print(f"[control_plane] {message}", file=sys.stderr, flush=True)


async def run_slots(count: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run ``one(i)`` for i in 0..count-1 with ``IN_FLIGHT`` at a time; return the seconds."""
    numbers = iter(range(count))

    async def slot() -> None:
        for i in numbers:
            await one(i)

    started = time.perf_counter()
    await asyncio.gather(*(slot() for _ in range(IN_FLIGHT)))
    return time.perf_counter() - started


# Baseline -----------------------------------------------------------------------------------


async def raw_chain(nats_url: str, count: int) -> tuple[float, list[float]]:
    """Return (requests/s, latencies in ms) of the raw four-hop JetStream chain."""
    client = await nats.connect(nats_url)
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=CHAIN_STREAM, subjects=["benchchain.>"]))
    relays: list[NatsClient] = []
    tasks: list[asyncio.Task[None]] = []
    arrived: dict[str, asyncio.Future[float]] = {}
    stop = asyncio.Event()

    async def relay(hop: int, ready: asyncio.Event) -> None:
        nc = await nats.connect(nats_url)
        relays.append(nc)
        rjs = nc.jetstream()
        sub = await rjs.pull_subscribe(
            f"benchchain.hop{hop}",
            durable=f"hop{hop}",
            stream=CHAIN_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
        )
        ready.set()

        async def forward(msg: Msg) -> None:
            await rjs.publish(f"benchchain.hop{hop + 1}", msg.data)
            await msg.ack()

        while not stop.is_set():
            try:
                messages = await sub.fetch(64, timeout=1)
            except (TimeoutError, NatsTimeoutError):
                continue
            await asyncio.gather(*(forward(m) for m in messages))

    async def seen(msg: Msg) -> None:
        key = json.loads(msg.data)["id"]
        waiter = arrived.get(key)
        if waiter is not None and not waiter.done():
            waiter.set_result(time.perf_counter())

    await client.subscribe(f"benchchain.hop{CHAIN_HOPS - 1}", cb=seen)
    for hop in range(CHAIN_HOPS - 1):
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(relay(hop, ready)))
        await ready.wait()

    latencies: list[float] = []

    async def one(i: int, prefix: str) -> None:
        key = f"{prefix}-{i}"
        waiter = arrived[key] = asyncio.get_running_loop().create_future()
        started = time.perf_counter()
        await js.publish("benchchain.hop0", json.dumps({"id": key, "pad": CHAIN_PADDING}).encode())
        done = await asyncio.wait_for(waiter, RUNNING_TIMEOUT_S)
        del arrived[key]
        if prefix == "run":
            latencies.append((done - started) * 1000)

    try:
        await run_slots(WARMUP, lambda i: one(i, "warm"))
        elapsed = await run_slots(count, lambda i: one(i, "run"))
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for nc in relays:
            await nc.close()
        await js.delete_stream(CHAIN_STREAM)
        await client.close()
    return count / elapsed, latencies


# Ours: the services -------------------------------------------------------------------------


@dataclass
class Services:
    """The running services, a client connection and what the run requests with."""

    processes: list[Any] = field(default_factory=list)
    nc: NatsClient | None = None
    admin: str = ""
    member: str = ""
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def client(self) -> NatsClient:
        assert self.nc is not None
        return self.nc

    async def auth(self, operation: str, body: dict[str, Any], token: str | None = None) -> Any:
        address = f"192.0.2.{uuid.uuid4().int % 250}"
        return await call(self.client, "auth", operation, body, token=token, client_address=address)

    async def inventory(self, operation: str, body: dict[str, Any]) -> Any:
        return await call(self.client, "inventory", operation, body, token=self.admin, timeout_s=30)

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        for process in reversed(self.processes):
            process.terminate()  # SIGTERM: the service stops gracefully
            await asyncio.to_thread(process.join, 30)
            if process.is_alive():
                process.kill()


async def wait_for_row(conn: asyncpg.Connection, sql: str, *args: Any) -> None:
    """Wait until the inventory's projection has the row (auth's events are asynchronous)."""
    deadline = time.monotonic() + 30
    while not await conn.fetchval(sql, *args):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not projected in time: {sql} {args}")
        await asyncio.sleep(0.05)


def serve(kind: str, values: dict[str, Any], ready: Any) -> None:
    """One service in a process of its own, as deployed, until SIGTERM (runs in the child)."""
    builders: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
        "auth": (build_auth, AuthSettings),
        "inventory": (build_inventory, InventorySettings),
        "provisioner": (build_provisioner, ProvisionerSettings),
    }
    build, settings = builders[kind]

    async def main() -> None:
        configure_logging(kind, level="WARNING")
        app, _ = build(settings(**values))
        await app.start()
        if kind != "provisioner":  # answers requests once it can verify tokens
            await asyncio.wait_for(app.keys.ready.wait(), 30)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        ready.set()
        await stop.wait()
        await app.stop()

    asyncio.run(main())


async def start_services(
    services: Services,
    database_url: str,
    nats_url: str,
    hosts_dir: Path,
    conn: asyncpg.Connection,
) -> None:
    """Start auth, inventory and the datacenter's provisioner, each in its own process; create
    people and catalogue."""
    configure_logging("bench", level="WARNING")  # stderr, before the first stream is made
    for package in ("compgrid_auth", "compgrid_inventory", "compgrid_provisioner"):
        await asyncio.to_thread(upgrade, package, database_url)
    bootstrap_nc = await nats.connect(nats_url)
    await ensure_streams(bootstrap_nc.jetstream(), ALL_STREAMS)
    await bootstrap_nc.close()
    common: dict[str, Any] = {
        "database_url": database_url,
        "nats_url": nats_url,
        "log_level": "WARNING",
        "redis_url": os.environ.get("COMPGRID_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    }
    values: dict[str, dict[str, Any]] = {
        "auth": {
            **common,
            "redis_prefix": f"bench:{uuid.uuid4().hex[:8]}:",
            "admin_email": ADMIN,
            "admin_password": PASSWORD,
        },
        "inventory": {
            **common,
            "default_max_instances": None,
            "default_max_vcpus": None,
            "default_max_memory_mib": None,
            "default_max_gpus": None,
        },
        "provisioner": {
            **common,
            "datacenter": DATACENTER,
            "tick_interval_s": 60.0,
            "reconcile_interval_s": 60.0,
        },
    }
    spawn = multiprocessing.get_context("spawn")
    for kind in ("auth", "inventory", "provisioner"):
        ready = spawn.Event()
        process = spawn.Process(target=serve, args=(kind, values[kind], ready), name=kind)
        process.start()
        services.processes.append(process)
        if not await asyncio.to_thread(ready.wait, 60):
            raise RuntimeError(f"{kind} did not start within 60 s")
    services.nc = await nats.connect(nats_url)

    services.admin = (await services.auth("login", {"email": ADMIN, "password": PASSWORD}))[
        "access_token"
    ]
    people = {}
    for role in ("pi", "member"):
        email = f"bench-{role}-{uuid.uuid4().hex[:6]}@example.org"
        created = await services.auth(
            "users.create",
            {"email": email, "display_name": role, "password": PASSWORD, "roles": [role]},
            services.admin,
        )
        people[role] = (created["id"], email)
    project = await services.auth(
        "projects.create", {"name": "bench-lab", "pi_user_id": people["pi"][0]}, services.admin
    )
    await services.auth(
        "projects.add_member",
        {"project_id": project["id"], "user_id": people["member"][0], "role": "member"},
        services.admin,
    )
    today = date.today()
    code = await services.auth(
        "budget_codes.create",
        {
            "project_id": project["id"],
            "code": "BENCH-1",
            "name": "bench grant",
            "funding_amount": "100000000",
            "currency": "EUR",
            "valid_from": str(today - timedelta(days=30)),
            "valid_to": str(today + timedelta(days=365)),
        },
        services.admin,
    )
    await wait_for_row(
        conn, "SELECT count(*) FROM inventory.budget WHERE id = $1", uuid.UUID(code["id"])
    )
    await wait_for_row(
        conn, "SELECT count(*) FROM inventory.project WHERE id = $1", uuid.UUID(project["id"])
    )
    services.member = (
        await services.auth("login", {"email": people["member"][1], "password": PASSWORD})
    )["access_token"]

    uris = write_hosts(
        hosts_dir,
        [
            SimulatedHost(
                f"sim-{i}",
                vcpus=HOST_VCPUS,
                memory_mib=HOST_VCPUS * 1024,
            )
            for i in range(HOSTS)
        ],
        STORAGE_POOL,
    )
    await services.inventory("datacenters.create", {"name": DATACENTER})
    for name, uri in uris.items():
        await services.inventory(
            "hosts.register",
            {
                "datacenter": DATACENTER,
                "name": name,
                "libvirt_uri": uri,
                "vcpus": HOST_VCPUS,
                "memory_mib": HOST_VCPUS * 1024,
                "disk_gib": HOST_DISK_GIB,
                "cpu_overcommit": "1.0",
            },
        )
    image = await services.inventory(
        "images.create",
        {"name": "bench-linux", "system_type": "linux", "source": "/images/bench-linux.qcow2"},
    )
    tier = await services.inventory(
        "price_tiers.create",
        {
            "name": "bench-tier",
            "currency": "EUR",
            "effective_from": "2026-01-01T00:00:00Z",
            "rates": {
                "vcpu_hour": "0.10",
                "memory_gib_hour": "0.01",
                "storage_gib_month": "0.073",
                "gpu_hour": {},
            },
        },
    )
    kind = await services.inventory(
        "types.create",
        {
            "name": "bench-tiny",
            "vcpus": 1,
            "memory_mib": 512,
            "disk_gib": 1,
            "system_types": ["linux"],
            "price_tier_id": tier["id"],
        },
    )
    await wait_for_row(  # placement waits for the datacenter's worker to announce itself
        conn, "SELECT count(*) FROM inventory.worker WHERE datacenter = $1", DATACENTER
    )
    services.body = {
        "project_id": project["id"],
        "budget_code_id": code["id"],
        "instance_type": kind["name"],
        "image": image["name"],
        "datacenter": DATACENTER,
    }


# Ours: the measurement ----------------------------------------------------------------------


class Watch:
    """When each instance's command, start report and final state reached the bus."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.final: dict[str, str] = {}
        self._waiters: dict[str, asyncio.Future[None]] = {}

    async def on_message(self, msg: Msg) -> None:
        at = time.perf_counter()
        event = json.loads(msg.data)
        instance_id = event["instance_id"]
        if msg.subject == STATE_CHANGED:
            if event["state"] not in FINAL or instance_id in self.final:
                return
            self.final[instance_id] = event["state"]
            self.seen[(instance_id, "final")] = at
            waiter = self._waiters.get(instance_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        else:
            stage = "command" if msg.subject == COMMAND else "started"
            self.seen.setdefault((instance_id, stage), at)

    async def final_state(self, instance_id: str, timeout_s: float) -> str | None:
        """Wait for the instance's final state (None when it did not come in time)."""
        if instance_id not in self.final:
            waiter = self._waiters[instance_id] = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(waiter, timeout_s)
            except TimeoutError:
                return None
            finally:
                del self._waiters[instance_id]
        return self.final[instance_id]


@dataclass
class Outcome:
    """What one pass of requests gave."""

    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


async def request_all(services: Services, watch: Watch, prefix: str, count: int) -> Outcome:
    """Request ``count`` instances, ``IN_FLIGHT`` at a time, each until it is running."""
    outcome = Outcome(stages={"reply": [], "command": [], "started": [], "running": []})

    def failed(kind: str) -> None:
        outcome.errors[kind] = outcome.errors.get(kind, 0) + 1

    async def one(i: int) -> None:
        body = {**services.body, "name": f"{prefix}-{i}"}
        started = time.perf_counter()
        try:
            created = await call(
                services.client,
                "inventory",
                "instances.request",
                body,
                token=services.member,
                timeout_s=30,
            )
        except DomainError as exc:
            log(f"request {prefix}-{i} refused: {exc}")
            failed("error_reply")
            return
        replied = time.perf_counter()
        state = await watch.final_state(created["id"], RUNNING_TIMEOUT_S)
        if state != "running":
            log(f"instance {created['id']} ended {state or 'not running in time'}")
            failed(state or "timed_out")
            return
        ended = watch.seen[(created["id"], "final")]
        outcome.latencies.append((ended - started) * 1000)
        outcome.stages["reply"].append((replied - started) * 1000)
        outcome.stages["running"].append((ended - started) * 1000)
        for stage in ("command", "started"):
            at = watch.seen.get((created["id"], stage))
            if at is not None:
                outcome.stages[stage].append((at - started) * 1000)

    outcome.elapsed = await run_slots(count, one)
    return outcome


async def ours(database_url: str, nats_url: str) -> tuple[Outcome, dict[str, int]]:
    """Start the services, warm up, measure; return the outcome and the instances by state."""
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    conn = await asyncpg.connect(dsn)
    services = Services()
    try:
        with tempfile.TemporaryDirectory() as hosts_dir:
            await start_services(services, database_url, nats_url, Path(hosts_dir), conn)
            watch = Watch()
            for subject in (STATE_CHANGED, COMMAND, STARTED):
                await services.client.subscribe(subject, cb=watch.on_message)
            warm = await request_all(services, watch, "warm", WARMUP)
            if warm.errors:
                log(f"warm-up errors: {warm.errors}")
            log(f"warm-up: {WARMUP} instances in {warm.elapsed:.2f} s")
            outcome = await request_all(services, watch, "run", REQUESTS)
            for kind, n in warm.errors.items():
                outcome.errors[f"warmup_{kind}"] = n
            rows = await conn.fetch(
                "SELECT state, count(*) AS n FROM inventory.instance GROUP BY 1"
            )
            states = {str(r["state"]): int(r["n"]) for r in rows}
    finally:
        await services.stop()
        await conn.close()
    return outcome, states


async def main() -> None:
    """Measure the raw chain, then ours, on the same servers; print the JSON line."""
    async with bench_servers() as (database_url, nats_url):
        log(f"raw chain: {REQUESTS} requests, {IN_FLIGHT} in flight")
        base_rate, base_latencies = await raw_chain(nats_url, REQUESTS)
        log(f"raw chain: {base_rate:.1f} requests/s")
        log(f"ours: {REQUESTS} instances, {IN_FLIGHT} in flight")
        outcome, states = await ours(database_url, nats_url)
    log(f"instances by state after the run: {states}")
    errors = sum(outcome.errors.values())
    if errors:
        log(f"INVALID RUN: {errors} errors {outcome.errors}")
    rate = REQUESTS / outcome.elapsed
    p50 = percentile(outcome.latencies, 50) if outcome.latencies else float("nan")
    p99 = percentile(outcome.latencies, 99) if outcome.latencies else float("nan")
    base_p50 = percentile(base_latencies, 50)
    base_p99 = percentile(base_latencies, 99)
    report(
        "control_plane",
        rate,
        "instances/s",
        base_rate,
        rate / base_rate,
        p50_ms=round(p50, 2),
        p99_ms=round(p99, 2),
        baseline_p50_ms=round(base_p50, 2),
        baseline_p99_ms=round(base_p99, 2),
        p50_ratio=round(base_p50 / p50, 3),
        p99_ratio=round(base_p99 / p99, 3),
        instances=REQUESTS,
        in_flight=IN_FLIGHT,
        errors=errors,
        running=states.get("running", 0),
        hosts=HOSTS,
        stages_p50_ms={
            stage: round(percentile(values, 50), 2) if values else None
            for stage, values in outcome.stages.items()
        },
    )


if __name__ == "__main__":
    asyncio.run(main())

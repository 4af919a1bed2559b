"""``just dev`` end to end: the launcher starts every service, each becomes ready, mail reaches
its mailbox, every datacenter gets a provisioner worker, and it stops everything it started."""

from __future__ import annotations

import asyncio
import mailbox
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from email.message import Message
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from compgrid_runtime.embedded import free_port
from tests.e2e.devstack import (
    PROCESSES,
    Dev,
    answer,
    demo_grant,
    eventually,
    ready,
    request_body,
    running_dev,
)
from tests.harness.servers import Servers, drop_database

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def postgres_admin(_servers: tuple[Servers, str, str]) -> str:
    """The URL that creates and drops databases on the run's Postgres."""
    return _servers[1]


@pytest.fixture(scope="module")
async def dev(
    real: Servers, postgres_admin: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Dev]:
    """``just dev`` running for this module's tests, looking for datacenters every second."""
    state = tmp_path_factory.mktemp("dev")
    async with running_dev(real, postgres_admin, state, "dev", "--datacenter-poll", "1") as up:
        yield up


def run_devstack(
    tmp_path: Path, env: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env, "COMPGRID_GATEWAY_API_PORT": str(free_port())}
    env.pop("COMPGRID_NATS_URL", None)  # the launcher starts NATS from the wheel
    return subprocess.run(
        [sys.executable, "scripts/devstack.py", "--check", "--state-dir", str(tmp_path), *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def assert_started_and_stopped(done: subprocess.CompletedProcess[str]) -> None:
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for process in PROCESSES:
        assert f"{process} ready" in out, out
        assert f"{process}=0" in out, out  # each exited on its own after SIGTERM
    for email in ("admin@compgrid.example", "pi@compgrid.example", "researcher@compgrid.example"):
        assert email in out
    assert "finance@compgrid.example" in out
    assert "demo catalogue: datacenter demo-dc with 4 simulated hosts" in out
    assert done.stdout.rstrip().endswith("all stopped"), out


def assert_simulated_hosts(state: Path, uris: list[str]) -> None:
    """Each URI names a node file the launcher wrote under its state directory."""
    for uri in uris:
        assert uri.startswith(f"test://{state.resolve()}/hosts/"), uri
        assert Path(uri.removeprefix("test://")).is_file()


def no_process_left(tmp_path: Path) -> None:
    left = subprocess.run(
        ["pgrep", "-f", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert left.stdout.strip() == "", f"processes still running: {left.stdout}"


async def test_dev_starts_every_service_on_given_servers_and_stops_them(
    real: Servers, tmp_path: Path
) -> None:
    server, _, name = real.database_url.rpartition("/")
    env = {"COMPGRID_DATABASE_URL": f"{server}/{name}_dev", "COMPGRID_REDIS_URL": real.redis_url}
    try:
        done = run_devstack(tmp_path, env)
        assert_started_and_stopped(done)
        assert "postgres: COMPGRID_DATABASE_URL" in done.stdout
        assert f"created database {name}_dev" in done.stdout
        assert "nats: JetStream from the wheel" in done.stdout
        no_process_left(tmp_path)
        # the demo hosts are simulated libvirt hosts the demo-dc provisioner drives
        db = await asyncpg.connect(f"{server}/{name}_dev".replace("+asyncpg", ""))
        try:
            uris = [
                r["libvirt_uri"] for r in await db.fetch("SELECT libvirt_uri FROM inventory.host")
            ]
        finally:
            await db.close()
        assert len(uris) == 4
        assert_simulated_hosts(tmp_path, uris)
        again = run_devstack(tmp_path, env)  # a second start on the same data changes nothing
        assert_started_and_stopped(again)
        assert "created database" not in again.stdout
    finally:
        admin = server.replace("postgresql+asyncpg://", "postgresql://", 1) + "/postgres"
        await drop_database(admin, f"{name}_dev")


async def test_dev_runs_on_embedded_postgres_and_redis_when_none_is_given(tmp_path: Path) -> None:
    done = run_devstack(tmp_path, {}, "--embedded")
    assert_started_and_stopped(done)
    assert "postgres: embedded server" in done.stdout
    assert "redis: embedded server" in done.stdout
    no_process_left(tmp_path)


async def test_dev_mails_an_invitation_into_its_local_mailbox(dev: Dev) -> None:
    grant = await demo_grant(dev, "pi")
    invitee = f"newcomer-{uuid.uuid4().hex[:8]}@example.org"
    async with dev.http() as http:
        reply = await http.post(
            f"/projects/{grant['project_id']}/invitations",
            json={"email": invitee},
            headers=await dev.headers("pi"),
        )
    assert reply.status_code == 202, reply.text
    box = mailbox.Maildir(dev.state / "mail", create=False)

    async def delivered() -> Message | None:
        return next((m for m in box if invitee in str(m["To"])), None)

    mail = await eventually(delivered, f"a mail to {invitee} in {box}", 60)
    assert "invit" in str(mail["Subject"]).lower()
    assert list((dev.state / "mail" / "new").iterdir()), "kept as a new message"


async def test_dev_starts_a_provisioner_worker_for_a_datacenter_created_while_it_runs(
    dev: Dev,
) -> None:
    name = f"dc-{uuid.uuid4().hex[:8]}"
    mark = len(dev.said())
    async with dev.http() as http:
        made = await http.post(
            "/datacenters", json={"name": name}, headers=await dev.headers("admin")
        )
    assert made.status_code == 201, made.text
    await dev.says(rf"^provisioner@{name} started \(pid \d+", after=mark, timeout_s=60)
    await dev.says(rf"^provisioner@{name} ready", after=mark, timeout_s=120)
    proc = Path(f"/proc/{dev.pid(f'provisioner@{name}')}/cmdline")
    command = (await asyncio.to_thread(proc.read_bytes)).split(b"\0")
    assert command[command.index(b"--datacenter") + 1] == name.encode(), command

    async def announced() -> list[dict[str, Any]] | None:
        async with dev.http() as http:
            reply = await http.get("/datacenters", headers=await dev.headers("admin"))
        assert reply.status_code == 200, reply.text
        made = next(dc for dc in reply.json() if dc["name"] == name)
        return [w for w in made["workers"] if w["live"]] or None

    await eventually(announced, f"a live worker of {name} in GET /datacenters", 60)


async def wait_running(dev: Dev, http: httpx.AsyncClient, instance_id: str) -> None:
    """Wait until the instance runs (a service on its way may be restarting)."""
    headers = await dev.headers("researcher")

    async def running() -> bool | None:
        now = await answer(http, "GET", f"/instances/{instance_id}", headers=headers)
        assert now.status_code == 200, now.text
        assert now.json()["state"] not in ("failed", "rejected"), now.json()
        return True if now.json()["state"] == "running" else None

    await eventually(running, f"instance {instance_id} running", 240)


async def read_all_along(dev: Dev, grant: dict[str, Any], done: asyncio.Event) -> int:
    """Read instances, usage, budgets and one's account, each through a different service,
    until ``done``; every read must be answered in the end. Return how many were."""
    headers = await dev.headers("researcher")
    reads: tuple[tuple[str, dict[str, str]], ...] = (
        ("/instances", {"limit": "20"}),
        ("/usage", {"of": "project", "id": grant["project_id"]}),
        ("/budgets", {}),
        ("/me", {}),
    )
    answered = 0
    async with dev.http() as http:
        while not done.is_set():
            for path, params in reads:
                reply = await answer(http, "GET", path, params=params, headers=headers)
                assert reply.status_code == 200, f"GET {path}: {reply.text}"
                answered += 1
            await asyncio.sleep(0.2)
    return answered


@pytest.mark.timeout(1200)
async def test_dev_brings_back_each_killed_service_and_nothing_is_lost(dev: Dev) -> None:
    grant = await demo_grant(dev)
    headers = await dev.headers("researcher")
    done = asyncio.Event()
    reader = asyncio.create_task(read_all_along(dev, grant, done))
    async with dev.http() as http:
        for process in PROCESSES:
            body = request_body(grant)
            key = {"Idempotency-Key": str(uuid.uuid4())}
            made = await answer(http, "POST", "/instances", json=body, headers=headers | key)
            assert made.status_code == 202, made.text
            mark = len(dev.said())
            os.kill(dev.pid(process), signal.SIGKILL)
            name = re.escape(process)
            await dev.says(rf"^{name} exited with code -9; restarting it in \d+s", after=mark)
            await dev.says(rf"^{name} restarted \(pid \d+\)", after=mark)
            await ready(dev.health_port(process))
            await dev.says(rf"^{name} ready", after=mark)
            await wait_running(dev, http, made.json()["id"])
            gone = await answer(http, "DELETE", f"/instances/{made.json()['id']}", headers=headers)
            assert gone.status_code == 202, gone.text
    done.set()
    assert await reader > 0
    assert dev.launcher.poll() is None, "the launcher kept running"
    assert not [line for line in dev.said() if "giving up" in line]


async def test_dev_stops_at_once_while_an_event_stream_is_open(
    real: Servers, postgres_admin: str, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    async with running_dev(real, postgres_admin, tmp_path, "devstop") as dev:
        headers = await dev.headers("researcher")
        async with (
            dev.http() as http,
            http.stream("GET", "/events/instances", headers=headers) as stream,
        ):
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert await anext(lines) == "retry: 3000"  # the stream is open
            asked = loop.time()
            dev.launcher.send_signal(signal.SIGTERM)
            async for _ in lines:  # until the gateway ends the stream
                pass
            stream_ended = loop.time() - asked
            code = await asyncio.to_thread(dev.launcher.wait, 60)
            all_stopped = loop.time() - asked
    assert stream_ended < 5, f"the stream ended {stream_ended:.1f}s after SIGTERM"
    assert code == 0
    assert all_stopped < 20, f"the launcher took {all_stopped:.1f}s to stop everything"
    stopped = next(line for line in dev.said() if line.startswith("stopped: "))
    assert "gateway=0" in stopped, stopped  # stopped on its own, not killed after the grace


def test_the_launchers_help_names_it_and_shows_every_default() -> None:
    done = subprocess.run(
        [sys.executable, "scripts/devstack.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    usage, _, options = done.stdout.partition("options:")
    assert usage.startswith("usage: scripts/devstack.py "), usage
    assert "(what `just dev` runs)" in usage
    described = re.split(r"\n  (?=--)", options)[1:]  # one block per option after --help
    assert {block.split()[0] for block in described} >= {
        "--check",
        "--state-dir",
        "--embedded",
        "--fresh",
        "--restart-limit",
        "--restart-window",
        "--datacenter-poll",
        "--stop-grace",
    }
    for block in described:
        assert "(default: " in " ".join(block.split()), block
    assert "deaths of one service that end the run (default: 5)" in " ".join(options.split())


async def test_dev_gives_up_on_a_service_that_keeps_dying_and_stops_everything(
    real: Servers, postgres_admin: str, tmp_path: Path
) -> None:
    server, _, name = real.database_url.rpartition("/")
    env = {
        "COMPGRID_DATABASE_URL": f"{server}/{name}_dying",
        "COMPGRID_REDIS_URL": real.redis_url,
        "COMPGRID_GATEWAY_SSE_KEEPALIVE_S": "0",  # refused by its settings: exits at once
    }
    try:
        done = run_devstack(tmp_path, env, "--restart-limit", "3")
    finally:
        await drop_database(postgres_admin, f"{name}_dying")
    out = done.stdout
    assert done.returncode == 1, out
    assert "gateway exited with code 1; restarting it in 1s" in out, out
    assert "gateway exited with code 1; restarting it in 2s" in out, out  # backing off
    assert "gateway exited with code 1, 3 times within 60s; giving up: stopping everything" in out
    stopped = next(line for line in out.splitlines() if "stopped: " in line)
    for process in PROCESSES[:-1]:
        assert f"{process}=0" in stopped, stopped  # the others ran until then and stop cleanly
    assert out.rstrip().endswith("all stopped"), out
    no_process_left(tmp_path)

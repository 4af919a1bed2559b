"""``just dev`` end to end: the launcher starts every service, each becomes ready, and it stops
everything it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from compgrid_runtime.embedded import free_port
from tests.harness.servers import Servers, drop_database

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "inventory", "provisioner", "metering", "billing", "gateway")


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
    for service in SERVICES:
        assert f"{service} ready" in out, out
        assert f"{service}=0" in out, out  # each exited on its own after SIGTERM
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

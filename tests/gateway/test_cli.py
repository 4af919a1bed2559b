"""The ``compgrid`` command line end to end against the whole platform, run as people and
scripts run it: a separate process per command, its session in its own config directory, the
outcome read from the exit code, stdout (``--json``) and stderr."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import PASSWORDS, Stack

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]

DEMO_HOSTS = {"demo-host-01", "demo-host-02", "demo-host-03", "demo-gpu-01"}


@dataclass(frozen=True)
class Cli:
    """``compgrid`` for one person: the platform's URL and a config directory of its own."""

    url: str
    home: Path

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "COMPGRID_URL": self.url,
            "COMPGRID_CONFIG_DIR": str(self.home),
            "COLUMNS": "200",
        }
        env.pop("COMPGRID_API_TOKEN", None)
        return subprocess.run(
            [sys.executable, "-m", "compgrid_cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def json(self, *args: str) -> Any:
        """Run a command with ``--json``; it must succeed."""
        done = self(*args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    @property
    def credentials(self) -> Path:
        return self.home / "credentials.json"

    def session(self) -> dict[str, Any]:
        stored: dict[str, Any] = json.loads(self.credentials.read_text())["sessions"][self.url]
        return stored


def _signed_in(stack: Stack, home: Path, who: str) -> Cli:
    cli = Cli(stack.base_url, home)
    email, password = PASSWORDS[who]
    done = cli("login", "--email", email, "--password", password)
    assert done.returncode == 0, done.stderr
    return cli


@pytest.fixture(scope="module")
def researcher(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return _signed_in(stack, tmp_path_factory.mktemp("researcher"), "researcher")


@pytest.fixture(scope="module")
def admin(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return _signed_in(stack, tmp_path_factory.mktemp("admin"), "admin")


def _request(
    cli: Cli, name: str, *extra: str, instance_type: str = "small"
) -> subprocess.CompletedProcess[str]:
    return cli(
        "instances",
        "request",
        name,
        "--type",
        instance_type,
        "--image",
        "ubuntu-24.04",
        "--project",
        "Demo Lab",
        "--budget-code",
        "DEMO-GRANT-1",
        *extra,
    )


def test_login_keeps_the_session_readable_by_its_owner_only(stack: Stack, tmp_path: Path) -> None:
    cli = _signed_in(stack, tmp_path / "config", "pi")

    assert stat.S_IMODE(cli.credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.home.stat().st_mode) == 0o700
    session = cli.session()
    assert session["access_token"]
    assert session["refresh_token"]
    assert cli.json("whoami")["email"] == PASSWORDS["pi"][0]

    assert cli("logout").returncode == 0
    after = cli("whoami")
    assert after.returncode == 3
    assert after.stderr.startswith("error: not signed in")


def test_login_with_a_wrong_password_exits_3(stack: Stack, tmp_path: Path) -> None:
    cli = Cli(stack.base_url, tmp_path)

    done = cli("login", "--email", PASSWORDS["researcher"][0], "--password", "not-the-password")

    assert done.returncode == 3
    assert done.stderr.startswith("error: ")
    assert not cli.credentials.exists()


def test_an_expired_access_token_is_renewed_with_the_refresh_token(
    stack: Stack, tmp_path: Path
) -> None:
    cli = _signed_in(stack, tmp_path, "researcher")
    stored = json.loads(cli.credentials.read_text())
    stored["sessions"][stack.base_url]["access_token"] = "expired"
    cli.credentials.write_text(json.dumps(stored))

    assert cli.json("whoami")["email"] == PASSWORDS["researcher"][0]
    assert cli.session()["access_token"] != "expired"
    assert stat.S_IMODE(cli.credentials.stat().st_mode) == 0o600


def test_login_with_an_api_token(stack: Stack, tmp_path: Path) -> None:
    made = httpx.post(
        f"{stack.api}/me/api-tokens",
        json={"name": f"cli-{uuid.uuid4().hex[:6]}"},
        headers=stack.headers("researcher"),
        timeout=30,
    )
    assert made.status_code == 201, made.text
    cli = Cli(stack.base_url, tmp_path)

    assert cli("login", "--api-token", made.json()["token"]).returncode == 0

    assert cli.json("whoami")["email"] == PASSWORDS["researcher"][0]


def test_an_instance_requested_with_wait_runs_costs_and_stops(researcher: Cli) -> None:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    requested = _request(researcher, name, "--wait", "--timeout", "180", "--json")
    assert requested.returncode == 0, requested.stderr
    instance = json.loads(requested.stdout)
    assert instance["state"] == "running"
    assert researcher.json("instances", "show", instance["id"])["state"] == "running"
    listed = researcher.json("instances", "list", "--mine", "--state", "running", "--all")
    assert instance["id"] in {i["id"] for i in listed["items"]}

    costs = researcher.json("costs", "--instance", instance["id"])
    assert costs["currency"] == "EUR"
    assert costs["hourly_price"] == instance["hourly_price"]
    price = Decimal(costs["hourly_price"]["amount"])
    estimate = Decimal(costs["unrated_running_seconds"]) * price / 3600
    assert abs(Decimal(costs["estimated_unrated"]) - estimate) <= Decimal("0.000001")
    charged, total = Decimal(costs["charged"]), Decimal(costs["estimated_total"])
    assert total == charged + Decimal(costs["estimated_unrated"])
    assert total >= 0
    hours = (datetime.now(UTC) - datetime.fromisoformat(instance["created_at"])).total_seconds()
    assert total <= price * Decimal(hours / 3600 + 1)

    stopped = researcher.json("instances", "stop", instance["id"], "--wait", "--timeout", "180")
    assert stopped["state"] == "stopped"
    assert researcher.json("instances", "show", instance["id"])["state"] == "stopped"
    deleted = researcher.json("instances", "delete", instance["id"], "--wait", "--timeout", "180")
    assert deleted["state"] == "deleted"


def test_a_command_the_state_does_not_allow_exits_1(researcher: Cli) -> None:
    requested = _request(researcher, f"cli-{uuid.uuid4().hex[:8]}", "--wait", "--json")
    assert requested.returncode == 0, requested.stderr
    instance_id = json.loads(requested.stdout)["id"]

    done = researcher("instances", "start", instance_id)

    assert done.returncode == 1
    assert "(illegal_transition)" in done.stderr
    assert researcher("instances", "delete", instance_id).returncode == 0


def test_an_unknown_instance_exits_4(researcher: Cli) -> None:
    done = researcher("instances", "show", str(uuid.uuid4()))

    assert done.returncode == 4
    assert done.stderr.startswith("error: ")
    assert "(not_found)" in done.stderr


def test_invalid_input_exits_2_with_the_problems_detail_and_field(researcher: Cli) -> None:
    unknown_type = _request(researcher, "cli-bad-type", instance_type="no-such-type")
    assert unknown_type.returncode == 2
    assert "no-such-type" in unknown_type.stderr
    assert "field: instance_type" in unknown_type.stderr

    bad_name = _request(researcher, "not a valid name!")
    assert bad_name.returncode == 2
    assert "(invalid)" in bad_name.stderr
    assert "field: name" in bad_name.stderr

    missing_option = researcher("instances", "request", "cli-no-options")
    assert missing_option.returncode == 2


def test_admins_list_hosts_and_put_one_in_maintenance_and_back(admin: Cli) -> None:
    hosts = admin.json("hosts", "list", "--datacenter", "demo-dc")["items"]
    assert {h["name"] for h in hosts} >= DEMO_HOSTS
    table = admin("hosts", "list")
    assert table.returncode == 0
    assert all(name in table.stdout for name in DEMO_HOSTS)

    host = next(h for h in hosts if h["name"] == "demo-host-03")
    try:
        assert admin.json("hosts", "maintenance", "demo-host-03")["state"] == "maintenance"
        assert admin.json("hosts", "show", host["id"])["state"] == "maintenance"
    finally:
        back = admin.json("hosts", "maintenance", host["id"], "--off")
    assert back["state"] == "active"


def test_admins_run_billing_and_list_the_runs(admin: Cli) -> None:
    month = datetime.now(UTC).date().replace(day=1)
    last_month = (month - timedelta(days=1)).replace(day=1)

    run = admin.json("billing", "run", "--from", str(last_month), "--to", str(month))
    assert run["period_start"].startswith(str(last_month))
    assert run["period_end"].startswith(str(month))

    runs = admin.json("billing", "runs")["runs"]
    assert run["run_id"] in {r["run_id"] for r in runs}


def test_researchers_may_not_list_hosts(researcher: Cli) -> None:
    done = researcher("hosts", "list")

    assert done.returncode == 3
    assert "(forbidden)" in done.stderr


def test_a_rerun_with_the_same_idempotency_key_creates_nothing_new(researcher: Cli) -> None:
    key = uuid.uuid4().hex
    name = f"rerun-{key[:6]}"
    first = _request(researcher, name, "--idempotency-key", key, "--json")
    again = _request(researcher, name, "--idempotency-key", key, "--json")
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert json.loads(again.stdout)["id"] == json.loads(first.stdout)["id"]
    listed = researcher.json("instances", "list", "--mine", "--all")["items"]
    assert [i["name"] for i in listed].count(name) == 1
    other = _request(researcher, f"{name}-b", "--idempotency-key", key)
    assert other.returncode == 2, other.stderr  # the key was used for another request
    assert "idempotency_key_reused" in other.stderr

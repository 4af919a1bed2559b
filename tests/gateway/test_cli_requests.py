"""``compgrid instances request`` end to end, as a separate process per command: ``--lease``
and the budget hold it places (in the answer and in ``instances show``), and a request refused
at admission, which prints the reason and exits 1."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import PASSWORDS, Stack
from tests.gateway.test_cli import Cli

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis, pytest.mark.slow]


@pytest.fixture(scope="module")
def researcher(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    cli = Cli(stack.base_url, Path(tmp_path_factory.mktemp("requests")))
    email, password = PASSWORDS["researcher"]
    done = cli("login", "--email", email, "--password", password)
    assert done.returncode == 0, done.stderr
    return cli


def _request(cli: Cli, *extra: str, code: str = "DEMO-GRANT-1") -> list[str]:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    base = ["instances", "request", name, "--type", "small", "--image", "ubuntu-24.04"]
    return [*base, "--project", "Demo Lab", "--budget-code", code, *extra]


def test_a_lease_bounds_the_budget_hold_shown_in_the_answer_and_by_show(researcher: Cli) -> None:
    asked_at = datetime.now(UTC)
    leased = researcher.json(*_request(researcher, "--lease", "8h"))
    long = researcher.json(*_request(researcher, "--lease", "2d"))
    try:
        ends = datetime.fromisoformat(leased["lease_ends_at"])
        assert timedelta(hours=8) <= ends - asked_at <= timedelta(hours=8, minutes=2)
        hold = leased["hold"]
        assert datetime.fromisoformat(hold["until"]) == ends
        assert Decimal("7.9") <= Decimal(hold["hours"]) <= Decimal("8.0")
        assert hold["amount"]["currency"] == leased["hourly_price"]["currency"]
        # beyond the admission horizon (24 h) the hold stops at the horizon
        assert Decimal(long["hold"]["hours"]) == Decimal("24.00")

        shown = researcher("instances", "show", leased["id"])
        assert shown.returncode == 0, shown.stderr
        line = next(x for x in shown.stdout.splitlines() if "budget hold" in x)
        assert f"{hold['amount']['currency']}" in line
        assert " h, until " in line
    finally:
        for instance in (leased, long):
            researcher("instances", "delete", instance["id"])


def test_a_lease_the_cli_cannot_read_is_a_usage_error(researcher: Cli) -> None:
    done = researcher(*_request(researcher, "--lease", "soon"))
    assert done.returncode == 2
    assert "--lease" in done.stderr


def test_a_request_refused_at_admission_prints_why_and_exits_1(
    stack: Stack, researcher: Cli
) -> None:
    grant = next(
        c
        for c in httpx.get(
            f"{stack.api}/budget-codes", headers=stack.headers("pi"), timeout=30
        ).json()
        if c["code"] == "DEMO-GRANT-1"
    )
    tomorrow = date.today() + timedelta(days=1)
    code = f"LATER-{uuid.uuid4().hex[:8]}"
    made = httpx.post(
        f"{stack.api}/budget-codes",
        json={
            "project_id": grant["project_id"],
            "code": code,
            "name": "starts tomorrow",
            "funding_amount": "100",
            "currency": "EUR",
            "valid_from": str(tomorrow),
            "valid_to": str(tomorrow + timedelta(days=30)),
        },
        headers=stack.headers("pi"),
        timeout=30,
    )
    assert made.status_code == 201, made.text

    done = researcher(*_request(researcher, code=code))

    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"valid from {tomorrow}" in done.stderr
    assert "(budget_not_yet_valid)" in done.stderr

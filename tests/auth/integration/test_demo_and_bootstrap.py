"""The `just dev` demo people and the first-admin rules of a production start."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from compgrid_auth.config import Settings
from compgrid_auth.use_cases.demo import CODE, PEOPLE, PROJECT, seed_demo
from tests.auth.integration.conftest import AuthHarness

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.redis]


async def test_demo_seeds_each_role_with_a_working_login_and_is_idempotent(
    auth: AuthHarness,
) -> None:
    first = await seed_demo(auth.deps)
    again = await seed_demo(auth.deps)
    assert first == again
    assert set(first) == {"admin", "pi", "researcher", "finance"}
    tokens = {role: await auth.login(email, password) for role, (email, password) in first.items()}
    for role, token in tokens.items():
        me = await auth.call("me", token=token)
        assert me["email"] == PEOPLE[role][0]
    projects = await auth.call("projects.list", {}, token=tokens["researcher"])
    demo = [p for p in projects["items"] if p["name"] == PROJECT]
    assert len(demo) == 1  # seeding twice made one project
    codes = await auth.call("budget_codes.list", {"project_id": demo[0]["id"]}, token=tokens["pi"])
    assert [c["code"] for c in codes] == [CODE]
    finance_view = await auth.call(
        "budget_codes.list", {"project_id": demo[0]["id"]}, token=tokens["finance"]
    )
    assert [c["code"] for c in finance_view] == [CODE]
    me = await auth.call("me", token=tokens["researcher"])
    assert me["projects"] == {demo[0]["id"]: "member"}


def production_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPGRID_")}
    env.update(
        COMPGRID_ENVIRONMENT="production",
        COMPGRID_SECRET_KEY="a production secret of some length",
        COMPGRID_DATABASE_URL="postgresql+asyncpg://compgrid:pw@db.invalid:5432/compgrid",
        **extra,
    )
    return env


def test_production_settings_need_the_first_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in production_env().items():
        if name.startswith("COMPGRID_"):
            monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="COMPGRID_ADMIN_EMAIL and COMPGRID_ADMIN_PASSWORD"):
        Settings()
    monkeypatch.setenv("COMPGRID_ADMIN_EMAIL", "owner@example.org")
    monkeypatch.setenv("COMPGRID_ADMIN_PASSWORD", "a long admin passphrase")
    settings = Settings()
    assert settings.admin_email == "owner@example.org"


def test_the_auth_process_refuses_to_start_in_production_without_them() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "compgrid_auth"],
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid settings:" in done.stderr
    assert "COMPGRID_ADMIN_EMAIL and COMPGRID_ADMIN_PASSWORD must be set" in done.stderr
    assert "Traceback" not in done.stderr

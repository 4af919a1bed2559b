"""Where endpoints may point: in production neither plain http nor the cluster's own network;
never, anywhere, a link-local or cloud metadata address."""

from __future__ import annotations

from uuid import uuid4

import pytest

from compgrid_billing.use_cases.commands import create_webhook
from compgrid_events import billing_api as api
from compgrid_runtime.errors import Invalid
from compgrid_runtime.rpc import Caller
from compgrid_runtime.tokens import Principal
from tests.billing.integration.conftest import World, query, running_billing
from tests.harness.servers import Servers

ADMIN = Caller(principal=Principal(user_id=uuid4(), roles=frozenset({"admin"}), projects={}))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.1/hooks", "internal address 127.0.0.1"),
        ("https://localhost:8443/hooks", "internal address"),
        ("https://169.254.169.254/latest/meta-data", "metadata address 169.254.169.254"),
        ("https://[::1]/hooks", "internal address ::1"),
        ("http://billing.example.org/hooks", "https"),
    ],
)
async def test_endpoints_off_the_public_internet_are_refused_and_nothing_is_stored(
    world: World, clean_billing: Servers, url: str, reason: str
) -> None:
    async with running_billing(
        clean_billing, allow_internal_webhooks=False, allow_http_webhooks=False
    ) as (_, deps):
        with pytest.raises(Invalid, match=reason) as refused:
            await create_webhook(deps, ADMIN, api.CreateWebhook(url=url))
    assert refused.value.field == "url"
    assert await query(clean_billing, "SELECT id FROM billing.webhook") == []


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[fe80::1]/hooks",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://100.100.100.200/latest/meta-data/",
        "http://[::ffff:a9fe:a9fe]/",
    ],
)
async def test_metadata_endpoints_are_refused_in_development_too(
    world: World, clean_billing: Servers, url: str
) -> None:
    async with running_billing(clean_billing, environment="development") as (_, deps):
        assert deps.settings.internal_webhooks_allowed  # loopback stays allowed here
        with pytest.raises(Invalid, match="link-local or cloud metadata") as refused:
            await create_webhook(deps, ADMIN, api.CreateWebhook(url=url))
        allowed = await create_webhook(deps, ADMIN, api.CreateWebhook(url="http://127.0.0.1/h"))
    assert refused.value.field == "url"
    stored = await query(clean_billing, "SELECT id FROM billing.webhook")
    assert [r.id for r in stored] == [allowed.id]

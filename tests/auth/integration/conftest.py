"""The auth harness lives in ``tests/harness/auth.py``; its names are kept importable here."""

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest

from compgrid_runtime.tokens import KeyWatcher, TokenVerifier
from tests.harness.auth import ADMIN_EMAIL, ADMIN_PASSWORD, PASSWORD, AuthHarness, Inbox
from tests.harness.servers import Servers

__all__ = ["ADMIN_EMAIL", "ADMIN_PASSWORD", "PASSWORD", "AuthHarness", "Inbox"]


@pytest.fixture
async def remote_verifier(real: Servers) -> AsyncIterator[TokenVerifier]:
    """A verifier as another service has it: own NATS connection, own KeyWatcher."""
    client = await nats.connect(real.nats_url)
    verifier = TokenVerifier()
    watcher = KeyWatcher(client.jetstream(), verifier)
    watcher.start()
    await asyncio.wait_for(watcher.ready.wait(), 10)
    yield verifier
    await watcher.stop()
    await client.close()

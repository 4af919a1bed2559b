"""Session fixtures: the real servers every integration test uses (see ``tests/harness``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NatsClient

from tests.harness.auth import auth, db, smtp
from tests.harness.servers import Servers, create_database, drop_database, servers

__all__ = ["auth", "db", "smtp"]  # fixtures shared by every service's tests


@pytest.fixture(scope="session")
def _servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Servers, str, str]]:
    with servers(Path(tmp_path_factory.mktemp("servers"))) as found:
        yield found


@pytest.fixture(scope="session")
async def real(_servers: tuple[Servers, str, str]) -> AsyncIterator[Servers]:
    """The run's servers, with a fresh database created for the run and dropped after it."""
    found, admin_url, name = _servers
    await create_database(admin_url, name)
    yield found
    await drop_database(admin_url, name)


@pytest.fixture
async def nc(real: Servers) -> AsyncIterator[NatsClient]:
    """A NATS connection to the run's server."""
    client = await nats.connect(real.nats_url)
    yield client
    await client.close()

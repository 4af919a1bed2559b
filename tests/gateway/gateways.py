"""Gateway processes of their own for edge tests: each on a NATS server the test controls (the
test plays the services) and the run's Redis, stopped when the block ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from compgrid_runtime.embedded import free_port
from tests.harness.platform import answers


@contextlib.contextmanager
def gateway(nats_url: str, redis_url: str, log: Path, **settings: str) -> Iterator[str]:
    """Run ``python -m compgrid_gateway`` with ``settings`` (``COMPGRID_GATEWAY_`` names
    without the prefix) and yield its base URL once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "COMPGRID_GATEWAY_NATS_URL": nats_url,
        "COMPGRID_GATEWAY_REDIS_URL": redis_url,
        "COMPGRID_GATEWAY_API_PORT": str(port),
        "COMPGRID_GATEWAY_LOG_JSON": "false",
        **{f"COMPGRID_GATEWAY_{name.upper()}": value for name, value in settings.items()},
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "compgrid_gateway"], env=env, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert answers(f"{url}/healthz", process, timeout_s=60), log.read_text()
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)

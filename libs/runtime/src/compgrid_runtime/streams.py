"""Creating and checking JetStream streams from their declarations in ``compgrid_events``.

Only a stream's owner (its publishing service, or the deploy job for ``platform`` streams)
creates or updates it; other services check that it exists and never re-declare it.
``compgrid-streams ensure`` is the deploy job: it creates every stream.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Iterable

import nats
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from compgrid_events import ALL_STREAMS, StreamSpec
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


def stream_config(spec: StreamSpec, replicas: int = 1) -> StreamConfig:
    """Return the JetStream configuration of a declared stream."""
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        retention=RetentionPolicy(spec.retention.value),
        storage=StorageType.FILE if spec.file_storage else StorageType.MEMORY,
        duplicate_window=spec.duplicate_window_s,
        max_age=spec.max_age_s or 0,
        num_replicas=replicas,
    )


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    fields = ("subjects", "duplicate_window", "max_age", "num_replicas", "description")
    return any(getattr(current, f) != getattr(wanted, f) for f in fields)


async def ensure_streams(
    js: JetStreamContext, specs: Iterable[StreamSpec], *, replicas: int = 1
) -> None:
    """Create the given (owned) streams, or bring their settings up to date."""
    for spec in specs:
        wanted = stream_config(spec, replicas)
        try:
            info = await js.stream_info(spec.name)
        except NotFoundError:
            await js.add_stream(wanted)
            log.info("stream created", stream=spec.name)
            continue
        if _differs(info.config, wanted):
            await js.update_stream(wanted)
            log.info("stream updated", stream=spec.name)


async def missing_streams(js: JetStreamContext, specs: Iterable[StreamSpec]) -> list[str]:
    """Return the names of referenced streams that do not exist (yet)."""
    missing = []
    for spec in specs:
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            missing.append(spec.name)
    return missing


async def _ensure_all(url: str, replicas: int, user: str | None, password: str | None) -> None:
    nc = await nats.connect(url, user=user, password=password)
    try:
        await ensure_streams(nc.jetstream(), ALL_STREAMS, replicas=replicas)
    finally:
        await nc.close()


def main() -> None:
    """``compgrid-streams ensure``: create or update every declared stream (deploy job)."""
    parser = argparse.ArgumentParser(prog="compgrid-streams")
    parser.add_argument("command", choices=["ensure"])
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--user", default=os.environ.get("COMPGRID_NATS_USER"))
    args = parser.parse_args()
    password = os.environ.get("COMPGRID_NATS_PASSWORD")  # never on the command line
    asyncio.run(_ensure_all(args.nats_url, args.replicas, args.user, password))
    print(f"{len(ALL_STREAMS)} streams ensured")


if __name__ == "__main__":
    main()

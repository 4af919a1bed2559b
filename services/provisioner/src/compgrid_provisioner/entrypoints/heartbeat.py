"""The worker's heartbeat: it tells the inventory it serves its datacenter.

Every ``heartbeat_interval_s`` the worker publishes ``WorkerHeartbeat`` straight to JetStream
(not through the outbox: a heartbeat says "alive now", and a late copy after a crash would lie).
A heartbeat that cannot be published is logged and the next one tries again. On a graceful stop
the last heartbeat says ``stopping``, so the inventory need not wait for it to go stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid

from nats.js import JetStreamContext

from compgrid_events.base import utc_now
from compgrid_events.provisioner import WorkerHeartbeat
from compgrid_provisioner.config import Settings
from compgrid_runtime.app import ServiceApp, Step
from compgrid_runtime.logs import get_logger

log = get_logger(__name__)


def worker_id() -> str:
    """An id for this process, unique across restarts and machines."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def publish(js: JetStreamContext, event: WorkerHeartbeat) -> None:
    """Publish one heartbeat and wait for the stream's ack."""
    await js.publish(
        event.subject,
        event.to_json(),
        stream=event.stream.name,
        headers={"Nats-Msg-Id": str(event.event_id)},
        timeout=5,
    )


def heartbeat(settings: Settings) -> Step:
    """A background step that announces the worker until it is cancelled."""
    started_at = utc_now()
    me = worker_id()

    def event(stopping: bool = False) -> WorkerHeartbeat:
        return WorkerHeartbeat(
            datacenter=settings.datacenter,
            worker_id=me,
            hostname=socket.gethostname()[:255],
            pid=os.getpid(),
            started_at=started_at,
            interval_s=settings.heartbeat_interval_s,
            stopping=stopping,
        )

    async def loop(app: ServiceApp) -> None:
        try:
            while True:
                try:
                    await publish(app.js, event())
                except Exception as exc:  # the bus is away: the next beat tries again
                    log.warning("heartbeat not published", error=repr(exc))
                await asyncio.sleep(settings.heartbeat_interval_s)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(asyncio.wait_for(publish(app.js, event(True)), 2))

    return loop

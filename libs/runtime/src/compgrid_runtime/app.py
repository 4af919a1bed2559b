"""One service process: wiring of database, bus, outbox relay, consumers and health server.

Start-up: logs and tracing, engine, NATS, owned streams, consumers, relay, health server.
Shutdown on SIGTERM/SIGINT: not ready any more, stop taking messages and let in-flight ones
finish (up to ``shutdown_grace_s``), stop the broker, flush the outbox, close connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import nats
from faststream.nats import NatsBroker
from faststream.security import SASLPlaintext
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from pydantic import ValidationError
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import AsyncEngine

from compgrid_events import StreamSpec
from compgrid_events.streams import streams_owned_by
from compgrid_runtime.consumers import Consumers
from compgrid_runtime.db import create_engine, ping, session_factory
from compgrid_runtime.health import HealthServer
from compgrid_runtime.logs import configure_logging, get_logger
from compgrid_runtime.outbox import OutboxRelay
from compgrid_runtime.rpc import Ask, RpcServer, call
from compgrid_runtime.settings import ServiceSettings
from compgrid_runtime.streams import ensure_streams
from compgrid_runtime.tokens import KeyWatcher, TokenVerifier
from compgrid_runtime.tracing import configure_tracing
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

Step = Callable[["ServiceApp"], Coroutine[Any, Any, None]]
"""A start-up step (run before consuming) or a background job of a service process."""


def nats_options(settings: ServiceSettings) -> dict[str, object]:
    """Return connection options for nats-py from the settings."""
    options: dict[str, object] = {
        "servers": [settings.nats_url],
        "name": settings.service_name,
        "max_reconnect_attempts": -1,
    }
    if settings.nats_user:
        options["user"] = settings.nats_user
        if settings.nats_password is not None:
            options["password"] = settings.nats_password.get_secret_value()
    return options


@dataclass
class ServiceApp:
    """The running parts of one service process; ``bootstrap.py`` of each service builds one."""

    settings: ServiceSettings
    metadata: MetaData
    owned_streams: tuple[StreamSpec, ...] = ()
    on_start: list[Step] = field(default_factory=list)
    background: list[Step] = field(default_factory=list)
    engine: AsyncEngine = field(init=False)
    nc: NatsClient = field(init=False)
    js: JetStreamContext = field(init=False)
    broker: NatsBroker = field(init=False)
    relay: OutboxRelay = field(init=False)
    consumers: Consumers = field(init=False)
    verifier: TokenVerifier = field(init=False)
    rpc: RpcServer = field(init=False)
    keys: KeyWatcher = field(init=False)
    health: HealthServer | None = field(init=False, default=None)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    _stopping: bool = field(init=False, default=False)
    _abandoned: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        service = self.settings.service_name
        if not self.owned_streams:
            self.owned_streams = streams_owned_by(service)
        self.engine = create_engine(
            self.settings.database_url,
            pool_size=self.settings.db_pool_size,
            application_name=f"compgrid-{service}",
        )
        self._sessions = session_factory(self.engine)
        self.broker = NatsBroker(
            self.settings.nats_url,
            logger=logging.getLogger("faststream"),
            log_level=logging.DEBUG,  # one line per message is too much at INFO
            **self._broker_auth(),  # type: ignore[arg-type]
        )
        self.consumers = Consumers(service, lambda: self.js, self.unit_of_work)
        self.verifier = TokenVerifier()
        self.rpc = RpcServer(service, self.verifier, max_workers=self.settings.rpc_max_workers)

    def _broker_auth(self) -> dict[str, object]:
        options = nats_options(self.settings)
        auth: dict[str, object] = {"name": options["name"]}
        if "user" in options:
            auth["security"] = SASLPlaintext(
                username=str(options["user"]), password=str(options.get("password", ""))
            )
        return auth

    def asker(self, timeout_s: float) -> Ask:
        """Return a port that asks owning services over this process's NATS connection (made
        when it starts), waiting at most ``timeout_s`` for each answer."""

        async def ask(service: str, operation: str, body: dict[str, Any], *, token: str) -> Any:
            return await call(self.nc, service, operation, body, token=token, timeout_s=timeout_s)

        return ask

    def unit_of_work(self) -> UnitOfWork:
        """Return a new unit of work whose commit wakes the outbox relay."""
        return UnitOfWork(self._sessions, self.metadata, on_commit=self._notify_relay)

    def _notify_relay(self) -> None:
        relay = getattr(self, "relay", None)
        if relay is not None:
            relay.notify()

    async def start(self) -> None:
        """Connect everything and start consuming and relaying."""
        settings = self.settings
        configure_logging(settings.service_name, level=settings.log_level, json=settings.log_json)
        configure_tracing(settings.service_name, settings.otel_exporter_otlp_endpoint)
        self.nc = await nats.connect(**nats_options(settings))  # type: ignore[arg-type]
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, self.owned_streams, replicas=settings.stream_replicas)
        self.relay = OutboxRelay(
            self.engine,
            self.metadata,
            self.js,
            batch_size=settings.outbox_batch_size,
            poll_interval_s=settings.outbox_poll_interval_s,
        )
        self.relay.start()
        for step in self.on_start:
            await step(self)
        self.keys = KeyWatcher(self.js, self.verifier)
        self.keys.start()
        self.rpc.bind(self.broker)
        await self.broker.start()
        await self.consumers.start()
        checks = {"database": lambda: ping(self.engine), "nats": self._nats_ready}
        self.health = HealthServer(
            settings.service_name, checks, settings.http_host, settings.http_port
        )
        self.health.start()
        self._tasks = [asyncio.create_task(job(self)) for job in self.background]
        log.info("service started", health_port=self.health.port)

    async def _nats_ready(self) -> None:
        if self._stopping:
            raise RuntimeError("shutting down")
        if not self.nc.is_connected:
            raise ConnectionError("NATS is not connected")

    async def stop(self) -> None:
        """Finish in-flight work, flush the outbox and close every connection.

        The whole stop is bounded by ``shutdown_grace_s`` (plus at most one second per step once
        the grace is used up), and a failing or hanging step does not keep the others from
        running, so a process whose database or bus is gone still exits.
        """
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_grace_s
        drained = await self.consumers.drain(self.settings.shutdown_grace_s * 0.75)
        for task in self._tasks:
            task.cancel()
        # Only what was started is stopped: a stop may come while the process is starting.
        steps: list[tuple[str, Awaitable[Any]]] = [
            ("background", asyncio.gather(*self._tasks, return_exceptions=True)),
            ("broker", self.broker.stop()),
        ]
        if (keys := getattr(self, "keys", None)) is not None:
            steps.append(("keys", keys.stop()))
        if (relay := getattr(self, "relay", None)) is not None:
            steps.append(("outbox", relay.stop()))
        if self.health is not None:
            steps.append(("health", self.health.stop()))
        if (nc := getattr(self, "nc", None)) is not None:
            # Draining a connection that is not there only waits for reconnects that cannot
            # happen.
            steps.append(("nats", nc.drain() if nc.is_connected else nc.close()))
        steps.append(("database", self.engine.dispose()))
        for step, work in steps:
            remaining = deadline - asyncio.get_running_loop().time()
            if not await _bounded(step, work, max(1.0, min(10.0, remaining))):
                self._abandoned += 1
        log.info("service stopped", drained=drained, abandoned_steps=self._abandoned)

    async def run(self) -> None:
        """Start, wait for SIGTERM or SIGINT, then stop gracefully.

        A signal that arrives while the process is still starting (say the bus is unreachable
        and the connection keeps retrying) gives up the start and stops just the same.
        """
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # a failed start ends the process with its error
            await stopping
        else:
            log.warning("stop requested while starting; giving up the start")
            stopping.cancel()
            if not await _bounded("start", starting, 5.0):
                self._abandoned += 1
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)  # a second signal ends the process at once
        await self.stop()
        if self._abandoned:
            # asyncio.run() would wait for the abandoned steps forever while cancelling them;
            # everything that could be finished is finished, so end the process here.
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)


async def _bounded(step: str, work: Awaitable[Any], timeout_s: float) -> bool:
    """Run one shutdown step; log instead of raising when it fails or takes too long.

    Returns False when the step did not finish in time. It is then cancelled but not awaited:
    some client libraries swallow cancellation while reconnecting, and waiting for them would
    make the stop unbounded.
    """
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        log.warning("shutdown step timed out", step=step, timeout_s=round(timeout_s, 1))
        return False
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.warning("shutdown step failed", step=step, error=repr(exc))
    return True


def run_service(factory: Callable[[], ServiceApp]) -> None:
    """Build a service process from its settings and run it until SIGTERM/SIGINT.

    Invalid settings end the process with status 2 and one line per problem, not a traceback.
    """
    try:
        app = factory()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        print(f"invalid settings: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    asyncio.run(app.run())

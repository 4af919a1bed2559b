"""Durable JetStream pull consumers with explicit acks, an idempotent inbox and dead-letters.

Every consumer of every service goes through :class:`Consumers`, so no service re-implements
any of this. Each consumer pulls batches and, for each message:

1. malformed (unknown subject, bad JSON, unknown fields, wrong types) → dead-letter at once;
2. transactional handlers run inside a unit of work that first claims the event id in the
   inbox (see :mod:`compgrid_runtime.inbox`): a redelivered event is acknowledged without
   running the handler again; handlers never commit, the runtime does;
3. success → ack; :class:`PermanentError` → dead-letter; any other error → nak with the
   backoff of :mod:`compgrid_runtime.retry`, and dead-letter on the last allowed delivery.

The publisher's trace context is restored from the message headers around all of it. The pull
loop is nats-py's own (see docs/decisions/0003-pull-loop.md): it fetches what is available
without waiting to fill a batch, and handles a whole batch in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from compgrid_events import Event, StreamSpec, UnknownSubjectError, registry
from compgrid_runtime.deadletter import dead_letter
from compgrid_runtime.faults import fault_point
from compgrid_runtime.inbox import Outcome, Pending, apply_batch
from compgrid_runtime.logs import get_logger
from compgrid_runtime.metrics import HANDLER_SECONDS, IN_FLIGHT, MESSAGES
from compgrid_runtime.retry import PermanentError, RetryPolicy
from compgrid_runtime.tracing import extract_context, tracer
from compgrid_runtime.uow import UnitOfWork

log = get_logger(__name__)

Handler = Callable[..., Awaitable[None]]
"""``async def h(event, uow)`` when transactional, else ``async def h(event)``."""
MALFORMED = (UnknownSubjectError, ValidationError, ValueError, UnicodeDecodeError)


@dataclass(frozen=True)
class ConsumerSpec:
    """Everything about one durable consumer, stated where it is registered."""

    name: str
    stream: StreamSpec
    subject: str
    description: str = ""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    batch_size: int = 64
    fetch_timeout_s: float = 1.0
    ack_wait_s: float = 30.0
    max_ack_pending: int = 4096
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL

    def durable(self, service: str) -> str:
        """Return the durable name ``<service>-<name>`` (NATS forbids dots in it)."""
        return f"{service}-{self.name}".replace(".", "-")

    def consumer_config(self) -> ConsumerConfig:
        """Return the JetStream consumer settings; delivery caps are enforced here, not there."""
        return ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=-1,
            max_ack_pending=self.max_ack_pending,
            deliver_policy=self.deliver_policy,
        )


@dataclass(frozen=True)
class _Binding:
    spec: ConsumerSpec
    durable: str
    handlers: Mapping[type[Any], Handler]
    transactional: bool


@dataclass
class _Delivery:
    msg: Msg
    span: trace.Span
    started: float
    event: Event | None = None
    outcome: str = ""


class Consumers:
    """The JetStream consumers of one service process."""

    def __init__(
        self,
        service: str,
        js: Callable[[], JetStreamContext],
        uow: Callable[[], UnitOfWork] | None = None,
    ) -> None:
        self._service = service
        self._js = js
        self._uow = uow
        self._bindings: list[_Binding] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False

    def add(
        self,
        spec: ConsumerSpec,
        handlers: Mapping[type[Any], Handler],
        *,
        transactional: bool = True,
    ) -> None:
        """Register handlers (by event class) under one durable consumer."""
        if transactional and self._uow is None:
            raise ValueError("transactional handlers need a unit of work factory")
        self._bindings.append(_Binding(spec, spec.durable(self._service), handlers, transactional))

    async def start(self) -> None:
        """Create (or resume) every durable consumer and start pulling."""
        js = self._js()
        for binding in self._bindings:
            spec = binding.spec
            sub = await js.pull_subscribe(
                spec.subject,
                durable=binding.durable,
                stream=spec.stream.name,
                config=spec.consumer_config(),
            )
            self._tasks.append(asyncio.create_task(self._pull(binding, sub), name=binding.durable))

    async def drain(self, timeout_s: float) -> bool:
        """Stop fetching and let the batches in hand finish; True when all finished in time."""
        self._draining = True
        if not self._tasks:
            return True
        _, pending = await asyncio.wait(self._tasks, timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        return not pending

    async def _pull(self, binding: _Binding, sub: JetStreamContext.PullSubscription) -> None:
        spec = binding.spec
        while not self._draining:
            try:
                messages = await sub.fetch(spec.batch_size, timeout=spec.fetch_timeout_s)
            except (TimeoutError, NatsTimeoutError):
                continue
            except ConnectionClosedError:
                return
            except Exception as exc:
                log.warning("fetch failed; retrying", consumer=binding.durable, error=repr(exc))
                await asyncio.sleep(spec.fetch_timeout_s)
                continue
            await self.process(binding, messages)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def process(self, binding: _Binding, messages: list[Msg]) -> None:
        """Handle one fetched batch end to end (decode, apply once, ack / nak / dead-letter)."""
        IN_FLIGHT.labels(binding.durable).inc(len(messages))
        deliveries = [self._open(binding, msg) for msg in messages]
        try:
            pending = [d for d in deliveries if await self._admit(binding, d)]
            outcomes = await self._apply(binding, pending)
            for delivery, outcome in zip(pending, outcomes, strict=True):
                await self._settle(binding, delivery, outcome)
        finally:
            for delivery in deliveries:
                self._close(binding, delivery)

    def _open(self, binding: _Binding, msg: Msg) -> _Delivery:
        span = tracer.start_span(
            f"{binding.durable} process",
            context=extract_context(msg.headers),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "nats", "messaging.destination.name": msg.subject},
        )
        return _Delivery(msg, span, time.perf_counter())

    def _close(self, binding: _Binding, delivery: _Delivery) -> None:
        if delivery.outcome in ("dead_lettered", "retried", ""):
            delivery.span.set_status(Status(StatusCode.ERROR, delivery.outcome or "interrupted"))
        delivery.span.end()
        MESSAGES.labels(binding.durable, delivery.outcome or "interrupted").inc()
        HANDLER_SECONDS.labels(binding.durable).observe(time.perf_counter() - delivery.started)
        IN_FLIGHT.labels(binding.durable).dec()

    async def _admit(self, binding: _Binding, delivery: _Delivery) -> bool:
        msg = delivery.msg
        try:
            delivery.event = registry.decode(msg.subject, msg.data)
        except MALFORMED as exc:
            delivery.outcome = await self._give_up(binding, msg, "malformed", exc)
            return False
        if type(delivery.event) not in binding.handlers:
            await msg.ack()
            delivery.outcome = "skipped"
            return False
        if msg.metadata.num_delivered > binding.spec.retry.max_deliver:
            error = RuntimeError("delivered more often than allowed (the consumer kept dying)")
            delivery.outcome = await self._give_up(binding, msg, "max_deliver", error)
            return False
        return True

    async def _apply(self, binding: _Binding, pending: list[_Delivery]) -> list[Outcome]:
        items = [
            Pending(d.event, binding.handlers[type(d.event)], d.span)
            for d in pending
            if d.event is not None
        ]
        if binding.transactional:
            assert self._uow is not None
            return await apply_batch(binding.durable, self._uow, items)
        outcomes: list[Outcome] = []
        for item in items:
            try:
                with trace.use_span(item.span, end_on_exit=False):
                    await item.handler(item.event)
                outcomes.append(True)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    async def _settle(self, binding: _Binding, delivery: _Delivery, outcome: Outcome) -> None:
        msg = delivery.msg
        if not isinstance(outcome, Exception):
            fault_point("inbox.before_ack")
            await msg.ack()
            delivery.outcome = "acked" if outcome else "duplicate"
            return
        attempt = msg.metadata.num_delivered
        if isinstance(outcome, PermanentError):
            delivery.outcome = await self._give_up(binding, msg, "rejected", outcome)
        elif binding.spec.retry.exhausted(attempt):
            delivery.outcome = await self._give_up(binding, msg, "max_deliver", outcome)
        else:
            log.warning(
                "handler failed; will retry",
                consumer=binding.durable,
                delivery=attempt,
                error=repr(outcome),
            )
            await msg.nak(delay=binding.spec.retry.delay(attempt))
            delivery.outcome = "retried"

    async def _give_up(self, binding: _Binding, msg: Msg, reason: str, exc: BaseException) -> str:
        try:
            await dead_letter(
                self._js(),
                msg,
                service=self._service,
                consumer=binding.durable,
                reason=reason,
                error=f"{type(exc).__name__}: {exc}",
            )
        except Exception as dlq_error:
            log.error(
                "dead-lettering failed; will retry", consumer=binding.durable, error=repr(dlq_error)
            )
            await msg.nak(delay=binding.spec.retry.backoff_cap_s)
            return "retried"
        log.warning(
            "message dead-lettered",
            consumer=binding.durable,
            reason=reason,
            subject=msg.subject,
            error=repr(exc),
        )
        await msg.term()
        return "dead_lettered"

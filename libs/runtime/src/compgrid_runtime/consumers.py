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
without waiting to fill a batch, and handles a whole batch in one transaction. A consumer whose
handlers wait on something slow (a hypervisor) sets ``concurrency`` instead: its messages are
handled side by side, each in a transaction of its own, in order per ``key``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import partial
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
    concurrency: int = 1
    """How many messages are handled at once. 1: one fetched batch at a time, in one
    transaction. More: each message in a transaction of its own, up to this many at once (for
    handlers that wait on something slow, such as a hypervisor), ordered by ``key``."""
    key: Callable[[Event], Hashable] | None = None
    """With ``concurrency`` > 1: messages with the same key are handled one after another, in
    the order they arrived; messages of different keys run side by side."""

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
    batched: bool = False


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
        batched: bool = False,
    ) -> None:
        """Register handlers (by event class) under one durable consumer.

        ``batched`` (not transactional): each handler gets every event of its class in a
        fetched batch at once, as a list; when it raises, every one of them is retried.
        """
        if transactional and self._uow is None:
            raise ValueError("transactional handlers need a unit of work factory")
        if batched and transactional:
            raise ValueError("batched handlers are not transactional")
        binding = _Binding(spec, spec.durable(self._service), handlers, transactional, batched)
        self._bindings.append(binding)

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
        if binding.spec.concurrency > 1:
            await self._pull_concurrently(binding, sub)
            return
        while not self._draining:
            messages = await self._fetch(binding, sub, binding.spec.batch_size)
            if messages is None:
                return
            if messages:
                await self.process(binding, messages)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    async def _fetch(
        self, binding: _Binding, sub: JetStreamContext.PullSubscription, count: int
    ) -> list[Msg] | None:
        """Up to ``count`` messages; [] when none came in time; None when the loop must end."""
        spec = binding.spec
        try:
            return await sub.fetch(count, timeout=spec.fetch_timeout_s)
        except (TimeoutError, NatsTimeoutError):
            return []
        except ConnectionClosedError:
            return None
        except Exception as exc:
            log.warning("fetch failed; retrying", consumer=binding.durable, error=repr(exc))
            await asyncio.sleep(spec.fetch_timeout_s)
            return []

    async def _pull_concurrently(
        self, binding: _Binding, sub: JetStreamContext.PullSubscription
    ) -> None:
        """Fetch only as many messages as there are free slots; handle each on its own, after
        the message before it with the same key."""
        spec = binding.spec
        slots = asyncio.Semaphore(spec.concurrency)
        last: dict[Hashable, asyncio.Task[None]] = {}
        running: set[asyncio.Task[None]] = set()

        async def handle(msg: Msg, before: asyncio.Task[None] | None) -> None:
            try:
                if before is not None:
                    await asyncio.wait([before])
                await self.process(binding, [msg])
            finally:
                slots.release()

        def forget(key: Hashable, task: asyncio.Task[None]) -> None:
            running.discard(task)
            if last.get(key) is task:
                del last[key]

        try:
            while not self._draining:
                await slots.acquire()
                free = 1
                while free < spec.batch_size and not slots.locked():
                    await slots.acquire()
                    free += 1
                messages = await self._fetch(binding, sub, free)
                for _ in range(free - len(messages or [])):
                    slots.release()
                if messages is None:
                    break
                for msg in messages:
                    key = self._key(binding, msg)
                    task = asyncio.create_task(handle(msg, last.get(key)))
                    last[key] = task
                    running.add(task)
                    task.add_done_callback(partial(forget, key))
            if running:
                await asyncio.wait(running)
        finally:  # a drain that ran out of time cancels the loop: its handlers go with it
            for task in list(running):
                task.cancel()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()

    @staticmethod
    def _key(binding: _Binding, msg: Msg) -> Hashable:
        """The message's ordering key (a message that does not decode is its own key)."""
        key = binding.spec.key
        if key is not None:
            with contextlib.suppress(*MALFORMED):
                return key(registry.decode(msg.subject, msg.data))
        return (msg.metadata.sequence.stream,)

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
        if binding.batched:
            return await self._apply_batched(items)
        outcomes: list[Outcome] = []
        for item in items:
            try:
                with trace.use_span(item.span, end_on_exit=False):
                    await item.handler(item.event)
                outcomes.append(True)
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    @staticmethod
    async def _apply_batched(items: list[Pending]) -> list[Outcome]:
        outcomes: dict[int, Outcome] = {}
        by_handler: dict[Handler, list[int]] = {}
        for n, item in enumerate(items):
            by_handler.setdefault(item.handler, []).append(n)
        for handler, numbers in by_handler.items():
            try:
                await handler([items[n].event for n in numbers])
                outcome: Outcome = True
            except Exception as exc:
                outcome = exc
            for n in numbers:
                outcomes[n] = outcome
        return [outcomes[n] for n in range(len(items))]

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

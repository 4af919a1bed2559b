"""The metering service's durable consumers."""

from __future__ import annotations

from functools import partial

from compgrid_events.provisioner import UsageTick
from compgrid_events.streams import USAGE
from compgrid_metering.use_cases.deps import Deps
from compgrid_metering.use_cases.ingest import on_usage_ticks
from compgrid_runtime.consumers import Consumers, ConsumerSpec
from compgrid_runtime.retry import RetryPolicy


def usage_spec(deps: Deps) -> ConsumerSpec:
    """Every datacenter's usage ticks; every metering process shares this durable."""
    return ConsumerSpec(
        "usage",
        USAGE,
        "usage.>",
        "usage ticks of every datacenter into the counters",
        batch_size=deps.settings.usage_batch_size,
        ack_wait_s=deps.settings.usage_ack_wait_s,
        # a handler failure here is Redis being away (malformed ticks are dead-lettered before
        # the handler runs): retry for as long as it may take to come back
        retry=RetryPolicy.lasting(deps.settings.usage_retry_for_s),
    )


def register_consumers(consumers: Consumers, deps: Deps) -> None:
    """Bind every handler to its durable consumer."""
    # Not transactional: a tick's exactly-once claim lives in Redis, with its increments; a
    # fetched batch is summed and applied in one script call.
    consumers.add(
        usage_spec(deps),
        {UsageTick: partial(on_usage_ticks, deps)},
        transactional=False,
        batched=True,
    )

"""The billing service's durable consumers."""

from __future__ import annotations

from functools import partial

from compgrid_billing.use_cases import announcements, events, notices
from compgrid_billing.use_cases.deps import Deps
from compgrid_events.auth import (
    BudgetCodeCreated,
    BudgetCodeUpdated,
    ProjectCreated,
    UserRegistered,
)
from compgrid_events.billing import BudgetExhausted, BudgetThresholdCrossed
from compgrid_events.inventory import (
    InstanceRejected,
    InstanceRequested,
    InstanceStateChanged,
    PriceTierChanged,
)
from compgrid_events.metering import UsageRecorded
from compgrid_events.streams import AUTH, BILLING, INVENTORY, METERING
from compgrid_runtime.consumers import Consumers, ConsumerSpec
from compgrid_runtime.retry import RetryPolicy

IDENTITY = ConsumerSpec("identity", AUTH, "auth.>", "people, projects and budget codes")
INSTANCES = ConsumerSpec(
    "instances",
    INVENTORY,
    "inventory.>",
    "instances and their holds, and price tiers",
)


NOTICES = ConsumerSpec(
    "notices",
    BILLING,
    "billing.budget.>",
    "billing's own threshold and exhaustion events, mailed to the PI and billing contacts",
)
ANNOUNCEMENTS = ConsumerSpec(
    "announcements",
    BILLING,
    "billing.budget.>",
    "billing's own threshold and exhaustion events, sent to the webhooks subscribed to them",
)


def usage_spec(deps: Deps) -> ConsumerSpec:
    """Closed hours of usage from metering; every billing process shares this durable."""
    return ConsumerSpec(
        "usage",
        METERING,
        "metering.usage.recorded",
        "closed hours of usage, to be rated",
        batch_size=deps.settings.usage_batch_size,
        # a handler failure here is the database being away: retry for a long time
        retry=RetryPolicy.lasting(6 * 3600.0),
    )


def register_consumers(consumers: Consumers, deps: Deps) -> None:
    """Bind every handler to its durable consumer."""
    consumers.add(
        IDENTITY,
        {
            UserRegistered: partial(events.on_user_registered, deps),
            ProjectCreated: partial(events.on_project_created, deps),
            BudgetCodeCreated: partial(events.on_budget_code, deps),
            BudgetCodeUpdated: partial(events.on_budget_code, deps),
        },
    )
    consumers.add(
        INSTANCES,
        {
            InstanceRequested: partial(events.on_instance_requested, deps),
            InstanceStateChanged: partial(events.on_instance_state, deps),
            InstanceRejected: partial(events.on_instance_rejected, deps),
            PriceTierChanged: partial(events.on_price_tier, deps),
        },
    )
    consumers.add(
        NOTICES,
        {
            BudgetThresholdCrossed: partial(notices.on_threshold, deps),
            BudgetExhausted: partial(notices.on_exhausted, deps),
        },
    )
    consumers.add(
        ANNOUNCEMENTS,
        {
            BudgetThresholdCrossed: partial(announcements.on_threshold, deps),
            BudgetExhausted: partial(announcements.on_exhausted, deps),
        },
    )
    # Not transactional through the inbox: storing a newer revision and rating are idempotent,
    # and a fetched batch is stored and rated in one transaction.
    consumers.add(
        usage_spec(deps),
        {UsageRecorded: partial(events.on_usage, deps)},
        transactional=False,
        batched=True,
    )

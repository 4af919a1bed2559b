"""The inventory's durable consumers: identity, budget and provisioner events."""

from __future__ import annotations

from functools import partial

from nats.js.api import DeliverPolicy

from compgrid_events.auth import BudgetCodeCreated, BudgetCodeUpdated, ProjectCreated
from compgrid_events.billing import BudgetExhausted, BudgetStatusChanged
from compgrid_events.provisioner import (
    HostUnreachable,
    InstanceDeleted,
    InstanceFailed,
    InstanceStarted,
    InstanceStopped,
    WorkerHeartbeat,
)
from compgrid_events.streams import AUTH, BILLING, HEARTBEAT, PROVISIONER
from compgrid_inventory.use_cases import events, workers
from compgrid_inventory.use_cases.deps import Deps
from compgrid_runtime.consumers import Consumers, ConsumerSpec

IDENTITY = ConsumerSpec("identity", AUTH, "auth.>", "projects and budget codes, for admission")
BUDGETS = ConsumerSpec(
    "budgets", BILLING, "billing.budget.>", "what budget codes have left; exhaustion"
)
RESULTS = ConsumerSpec(
    "provisioner-results",
    PROVISIONER,
    "provisioner.>",
    "instances and hosts as provisioners see them",
)

WORKERS = ConsumerSpec(
    "workers",
    HEARTBEAT,
    "heartbeat.provisioner.>",
    "which provisioner workers serve which datacenter",
    # each datacenter's latest beat, also one sent before this consumer first existed (a
    # fresh platform's workers may beat before the inventory starts); an old beat is
    # harmless, since a worker is live only while its last beat is recent
    deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
)


def register_consumers(consumers: Consumers, deps: Deps) -> None:
    """Bind every handler to its durable consumer."""
    consumers.add(
        IDENTITY,
        {
            ProjectCreated: events.on_project_created,
            BudgetCodeCreated: events.on_budget_code,
            BudgetCodeUpdated: events.on_budget_code,
        },
    )
    consumers.add(
        BUDGETS,
        {
            BudgetStatusChanged: events.on_budget_status,
            BudgetExhausted: events.on_budget_exhausted,
        },
    )
    consumers.add(
        RESULTS,
        {
            InstanceStarted: events.on_started,
            InstanceStopped: events.on_stopped,
            InstanceFailed: events.on_failed,
            InstanceDeleted: events.on_deleted,
            HostUnreachable: events.on_host_unreachable,
        },
    )
    consumers.add(
        WORKERS,
        {WorkerHeartbeat: partial(workers.on_heartbeat, deps)},
        transactional=False,
        batched=True,
    )

"""The auth service's durable consumer: its own membership events, to publish project roles."""

from __future__ import annotations

from functools import partial

from compgrid_auth.use_cases.access import on_membership_changed
from compgrid_auth.use_cases.deps import Deps
from compgrid_events.auth import MembershipChanged
from compgrid_events.streams import AUTH
from compgrid_runtime.consumers import Consumers, ConsumerSpec

ACCESS = ConsumerSpec(
    "access",
    AUTH,
    MembershipChanged.subject_template,
    "membership changes, to publish each account's current project roles to every verifier",
)


def register_consumers(consumers: Consumers, deps: Deps) -> None:
    """Bind the handler to its durable consumer (idempotent: it publishes current state)."""
    consumers.add(
        ACCESS, {MembershipChanged: partial(on_membership_changed, deps)}, transactional=False
    )

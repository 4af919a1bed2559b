"""The instance lifecycle of DESIGN.md as pure rules.

``requested → scheduled → starting → running ⇄ stopping → stopped → deleting → deleted``, plus
``pending_approval`` before admission, ``failed`` and ``rejected`` with a reason. People's
actions are checked against the current state (an illegal one is refused and changes nothing);
provisioner reports move the state only where that is a step forward, so a late or repeated
report is ignored. Every change bumps the instance's version.
"""

from __future__ import annotations

from enum import StrEnum

from compgrid_events.inventory import InstanceState as S
from compgrid_runtime.errors import Conflict

LIVE = frozenset(
    {S.REQUESTED, S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.DELETING}
)
"""States that hold host capacity and count against the project's quota."""
GONE = frozenset({S.DELETED, S.REJECTED})
"""States an instance never leaves; its name is free again."""
UP = frozenset({S.SCHEDULED, S.STARTING, S.RUNNING})
"""States in which the instance runs or is about to (what a stop applies to)."""


class Action(StrEnum):
    """What a person can ask of an instance."""

    START = "start"
    STOP = "stop"
    REBOOT = "reboot"
    DELETE = "delete"
    APPROVE = "approve"
    DENY = "deny"


class Report(StrEnum):
    """What a provisioner can report about an instance."""

    STARTED = "started"
    STOPPED = "stopped"
    FAILED = "failed"
    DELETED = "deleted"


_ACTIONS: dict[Action, tuple[frozenset[S], S]] = {
    Action.START: (frozenset({S.STOPPED}), S.STARTING),
    Action.STOP: (UP, S.STOPPING),
    Action.REBOOT: (frozenset({S.RUNNING}), S.RUNNING),
    Action.DELETE: (
        frozenset(set(S) - {S.DELETING, S.DELETED, S.REJECTED}),
        S.DELETING,
    ),
    Action.APPROVE: (frozenset({S.PENDING_APPROVAL}), S.REQUESTED),
    Action.DENY: (frozenset({S.PENDING_APPROVAL}), S.REJECTED),
}

_REPORTS: dict[Report, frozenset[S]] = {
    # A domain found running after a stop is running: metering bills what runs.
    Report.STARTED: frozenset({S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPED}),
    Report.STOPPED: frozenset({S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED}),
    Report.FAILED: frozenset(
        {S.SCHEDULED, S.STARTING, S.RUNNING, S.STOPPING, S.STOPPED, S.DELETING}
    ),
    Report.DELETED: frozenset(LIVE | {S.FAILED}),
}
_REPORTED: dict[Report, S] = {
    Report.STARTED: S.RUNNING,
    Report.STOPPED: S.STOPPED,
    Report.FAILED: S.FAILED,
    Report.DELETED: S.DELETED,
}


class IllegalTransition(Conflict):
    """The action is not possible in the instance's current state."""

    code = "illegal_transition"


def after_action(state: S, action: Action) -> S:
    """Return the state an action leads to, or refuse it in this state."""
    allowed, target = _ACTIONS[action]
    if state not in allowed:
        raise IllegalTransition(f"cannot {action.value} an instance that is {state.value}")
    return target


def after_report(state: S, report: Report) -> S | None:
    """Return the state a provisioner report leads to; None when it must be ignored."""
    if state not in _REPORTS[report]:
        return None
    return _REPORTED[report]

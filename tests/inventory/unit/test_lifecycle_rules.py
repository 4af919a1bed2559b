"""The lifecycle rules: which actions each state allows and which reports move it."""

from __future__ import annotations

import pytest

from compgrid_events.inventory import InstanceState as S
from compgrid_inventory.domain.lifecycle import (
    LIVE,
    Action,
    IllegalTransition,
    Report,
    after_action,
    after_report,
)


@pytest.mark.parametrize(
    ("state", "action", "target"),
    [
        (S.STOPPED, Action.START, S.STARTING),
        (S.RUNNING, Action.STOP, S.STOPPING),
        (S.SCHEDULED, Action.STOP, S.STOPPING),
        (S.RUNNING, Action.REBOOT, S.RUNNING),
        (S.RUNNING, Action.DELETE, S.DELETING),
        (S.FAILED, Action.DELETE, S.DELETING),
        (S.PENDING_APPROVAL, Action.APPROVE, S.REQUESTED),
        (S.PENDING_APPROVAL, Action.DENY, S.REJECTED),
    ],
)
def test_allowed_actions(state: S, action: Action, target: S) -> None:
    assert after_action(state, action) is target


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (S.DELETING, Action.START),
        (S.RUNNING, Action.START),
        (S.STOPPED, Action.STOP),
        (S.STOPPED, Action.REBOOT),
        (S.DELETED, Action.DELETE),
        (S.DELETING, Action.DELETE),
        (S.REJECTED, Action.DELETE),
        (S.RUNNING, Action.APPROVE),
        (S.REJECTED, Action.DENY),
    ],
)
def test_illegal_actions_are_refused_with_the_state(state: S, action: Action) -> None:
    with pytest.raises(IllegalTransition) as refused:
        after_action(state, action)
    assert refused.value.status == 409
    assert state.value in refused.value.message


def test_reports_only_move_forward() -> None:
    assert after_report(S.SCHEDULED, Report.STARTED) is S.RUNNING
    assert after_report(S.STOPPING, Report.STARTED) is None  # a start seen before the stop
    assert after_report(S.DELETING, Report.STARTED) is None
    assert after_report(S.DELETED, Report.STARTED) is None
    assert after_report(S.FAILED, Report.STARTED) is None  # its claim is gone
    assert after_report(S.DELETING, Report.STOPPED) is None
    assert after_report(S.RUNNING, Report.STOPPED) is S.STOPPED
    assert after_report(S.DELETING, Report.FAILED) is S.FAILED
    assert after_report(S.RUNNING, Report.DELETED) is S.DELETED
    assert after_report(S.REJECTED, Report.DELETED) is None
    assert after_report(S.PENDING_APPROVAL, Report.DELETED) is None


def test_live_states_hold_capacity() -> None:
    assert S.STOPPED in LIVE  # a stopped instance keeps its place on the host
    assert not {S.FAILED, S.DELETED, S.REJECTED, S.PENDING_APPROVAL} & LIVE

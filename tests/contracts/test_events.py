"""Event contracts: round-trip, strictness, ids, time, money, subjects, streams and AsyncAPI."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import ValidationError

from compgrid_events import (
    Event,
    Money,
    UnknownSubjectError,
    auth,
    billing,
    inventory,
    metering,
    provisioner,
    registry,
)
from compgrid_events.asyncapi import build_document, render
from compgrid_events.builders import build, examples
from compgrid_events.inventory import InstanceScheduled
from compgrid_events.provisioner import InstanceUsage, UsageTick

ASYNCAPI_FILE = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.json"
EXAMPLES = examples()
CLASSES = [type(e) for e in EXAMPLES]
by_example = pytest.mark.parametrize("event", EXAMPLES, ids=[c.__name__ for c in CLASSES])
by_class = pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])


def nats_match(filter_subject: str, subject: str) -> bool:
    """Return whether a NATS filter (``*`` one token, ``>`` the rest) matches a subject."""
    wanted, tokens = filter_subject.split("."), subject.split(".")
    for i, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or token not in ("*", tokens[i]):
            return False
    return len(tokens) == len(wanted)


def test_examples_cover_every_contract() -> None:
    modules = (auth, billing, inventory, metering, provisioner)
    declared = {
        value
        for module in modules
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Event)
        and "subject_template" in vars(value)
    }
    assert declared == set(CLASSES)


@by_example
def test_round_trips_through_json(event: Event) -> None:
    assert type(event).model_validate_json(event.to_json()) == event


@by_example
def test_registry_decodes_its_own_subject(event: Event) -> None:
    assert registry.decode(event.subject, event.to_json()) == event


@by_example
def test_rejects_unknown_fields(event: Event) -> None:
    data = event.model_dump()
    assert type(event).model_validate(data) == event
    with pytest.raises(ValidationError, match="extra"):
        type(event).model_validate({**data, "surprise": 1})


@by_class
def test_rejects_naive_occurred_at(cls: type[Event]) -> None:
    with pytest.raises(ValidationError, match="timezone"):
        build(cls, occurred_at=datetime(2025, 1, 1, 12, 0))


@by_class
def test_normalises_aware_occurred_at_to_utc(cls: type[Event]) -> None:
    plus_two = datetime(2025, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = build(cls, occurred_at=plus_two)
    assert event.occurred_at.tzinfo is UTC
    assert event.occurred_at == datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


@by_example
def test_is_frozen(event: Event) -> None:
    for name in ("event_id", "occurred_at"):
        with pytest.raises(ValidationError, match="frozen"):
            setattr(event, name, getattr(event, name))


@by_class
def test_event_id_is_a_fresh_uuid7(cls: type[Event]) -> None:
    first, second = build(cls), build(cls)
    assert first.event_id.version == 7
    assert first.event_id != second.event_id


def test_money_keeps_decimal_exactly() -> None:
    money = Money(amount=Decimal("0.10"), currency="EUR")
    assert json.loads(money.model_dump_json())["amount"] == "0.10"
    back = Money.model_validate_json(money.model_dump_json())
    assert isinstance(back.amount, Decimal)
    assert str(back.amount) == "0.10"
    assert back == money


@pytest.mark.parametrize("currency", ["eur", "EURO", "EU", ""])
def test_money_rejects_bad_currency(currency: str) -> None:
    with pytest.raises(ValidationError, match="currency"):
        Money(amount=Decimal(1), currency=currency)


def test_subject_fills_the_datacenter() -> None:
    event = build(InstanceScheduled, datacenter="dc1")
    assert event.subject == "provision.dc1.instance.scheduled"


def test_usage_tick_subject_carries_datacenter_and_host() -> None:
    event = build(UsageTick, datacenter="dc1", host="node-7")
    assert event.subject == "usage.dc1.node-7"


@by_example
def test_registry_resolves_a_concrete_subject_to_its_contract(event: Event) -> None:
    assert registry.resolve(event.subject) is type(event)


@pytest.mark.parametrize("subject", ["nowhere.at.all", "usage.dc1", "provision.dc1.instance.x"])
def test_registry_rejects_unknown_subject(subject: str) -> None:
    with pytest.raises(UnknownSubjectError):
        registry.resolve(subject)


@pytest.mark.parametrize("datacenter", ["dc.1", "dc 1", "", "dc>", "dc*"])
def test_rejects_routing_token_that_breaks_the_subject(datacenter: str) -> None:
    with pytest.raises(ValidationError, match="datacenter"):
        build(InstanceScheduled, datacenter=datacenter)


@pytest.mark.parametrize(
    ("filter_subject", "subject", "expected"),
    [
        ("usage.>", "usage.dc1.h1", True),
        ("usage.>", "usage", False),
        ("usage.*", "usage.dc1.h1", False),
        ("usage.*.*", "usage.dc1.h1", True),
        ("billing.>", "usage.dc1", False),
    ],
)
def test_nats_matcher(filter_subject: str, subject: str, expected: bool) -> None:
    assert nats_match(filter_subject, subject) is expected


@by_class
def test_stream_captures_the_subject(cls: type[Event]) -> None:
    assert any(nats_match(f, cls.subject_pattern()) for f in cls.stream.subjects), (
        f"{cls.__name__} publishes on {cls.subject_pattern()} outside stream {cls.stream.name}"
    )


def test_no_two_contracts_share_a_subject_pattern() -> None:
    patterns = [cls.subject_pattern() for cls in CLASSES]
    assert len(set(patterns)) == len(patterns)
    assert len({cls.__name__ for cls in CLASSES}) == len(CLASSES)


@by_class
def test_has_a_one_line_docstring(cls: type[Event]) -> None:
    doc = (cls.__dict__.get("__doc__") or "").strip()
    assert doc, f"{cls.__name__} has no docstring"
    assert "\n" not in doc, f"{cls.__name__} docstring is not one line"


def test_usage_interval_must_not_run_backwards() -> None:
    start = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert build(InstanceUsage, started_at=start, ended_at=start + timedelta(minutes=1))
    with pytest.raises(ValidationError, match="ended_at is before started_at"):
        build(InstanceUsage, started_at=start, ended_at=start - timedelta(seconds=1))


def test_committed_asyncapi_matches_the_contracts() -> None:
    committed = ASYNCAPI_FILE.read_text(encoding="utf-8") if ASYNCAPI_FILE.exists() else ""
    assert committed == render(), "docs/asyncapi.json is stale: run `uv run just asyncapi`"


def test_asyncapi_lists_every_contract() -> None:
    messages = build_document()["components"]["messages"]
    assert set(messages) == {cls.__name__ for cls in CLASSES}

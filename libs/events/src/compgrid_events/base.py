"""The event base: identity, time, version, subject and stream of every CompGrid event.

Every contract is a frozen pydantic model that rejects unknown fields. Its subject is a template
whose ``{field}`` tokens are filled from the event itself (routing tokens such as the datacenter
or host), and its stream is declared beside it. Subclasses register themselves in the registry.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, ClassVar
from uuid import UUID

import uuid_utils.compat as uuid_compat
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from compgrid_events.streams import StreamSpec

_TOKEN = re.compile(r"\{(\w+)\}")
_SUBJECT_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def uuid7() -> UUID:
    """Return a new time-ordered UUIDv7."""
    return uuid_compat.uuid7()


def utc_now() -> datetime:
    """Return the current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware datetime, normalised to UTC; naive datetimes are rejected."""

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 currency code")]
RoutingToken = Annotated[
    str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="a NATS subject token")
]


class Contract(BaseModel):
    """Base of every value travelling on the bus: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)


class Money(Contract):
    """An amount of money with its currency; never a float."""

    amount: Decimal
    currency: Currency


class MoneyLimit(Money):
    """A non-negative amount a rule compares against, as large as the stores keep (twelve
    digits before the point, six after)."""

    amount: Decimal = Field(ge=0, max_digits=18, decimal_places=6)


class Event(Contract):
    """Base of every event: UUIDv7 id, UTC time, schema version, subject and stream."""

    subject_template: ClassVar[str]
    stream: ClassVar[StreamSpec]
    schema_version: int = 1
    event_id: UUID = Field(default_factory=uuid7)
    occurred_at: UtcDatetime = Field(default_factory=utc_now)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "subject_template" in cls.__dict__:
            from compgrid_events.registry import registry

            registry.register(cls)

    @classmethod
    def event_type(cls) -> str:
        """Return the type name carried in the ``compgrid-event-type`` header."""
        return f"{cls.__name__}.v{cls.model_fields['schema_version'].default}"

    @classmethod
    def routing_tokens(cls) -> list[str]:
        """Return the field names that fill the subject's routing tokens, in order."""
        return _TOKEN.findall(cls.subject_template)

    @classmethod
    def subject_pattern(cls) -> str:
        """Return the subject with every routing token as the NATS wildcard ``*``."""
        return _TOKEN.sub("*", cls.subject_template)

    @classmethod
    def subject_for(cls, **tokens: str) -> str:
        """Return the subject filter for the given tokens; missing tokens stay ``*``."""
        return _TOKEN.sub(lambda m: tokens.get(m.group(1), "*"), cls.subject_template)

    @property
    def subject(self) -> str:
        """Return this event's concrete subject with its routing tokens filled in."""
        values = {name: str(getattr(self, name)) for name in self.routing_tokens()}
        for name, value in values.items():
            if not _SUBJECT_TOKEN.match(value):
                raise ValueError(f"routing token {name}={value!r} is not a valid subject token")
        return self.subject_template.format(**values)

    @property
    def aggregate_id(self) -> str:
        """Return the id whose events must stay in order (override per contract)."""
        return str(self.event_id)

    def to_json(self) -> bytes:
        """Serialise the event for the wire."""
        return self.model_dump_json().encode()

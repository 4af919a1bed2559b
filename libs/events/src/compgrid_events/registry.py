"""Registry from subject (and event type) to contract class, and decoding from the wire."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from compgrid_events.base import Event


class UnknownSubjectError(LookupError):
    """No contract is registered for a subject."""


def _matches(pattern: list[str], subject: list[str]) -> bool:
    if len(pattern) != len(subject):
        return False
    return all(p in ("*", s) for p, s in zip(pattern, subject, strict=True))


class EventRegistry:
    """Maps subjects and event type names to contract classes."""

    def __init__(self) -> None:
        self._by_pattern: dict[str, type[Event]] = {}
        self._by_type: dict[str, type[Event]] = {}

    def register(self, cls: type[Event]) -> None:
        """Add a contract; two contracts may not share a subject pattern."""
        pattern = cls.subject_pattern()
        existing = self._by_pattern.get(pattern)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"{cls.__name__} and {existing.__name__} share subject {pattern}")
        self._by_pattern[pattern] = cls
        self._by_type[cls.event_type()] = cls

    def resolve(self, subject: str) -> type[Event]:
        """Return the contract class for a concrete subject."""
        tokens = subject.split(".")
        for pattern, cls in self._by_pattern.items():
            if _matches(pattern.split("."), tokens):
                return cls
        raise UnknownSubjectError(f"no event contract for subject {subject!r}")

    def by_type(self, event_type: str) -> type[Event]:
        """Return the contract class for an event type name such as ``InstanceStarted.v1``."""
        try:
            return self._by_type[event_type]
        except KeyError:
            raise UnknownSubjectError(f"no event contract named {event_type!r}") from None

    def decode(self, subject: str, data: bytes) -> Event:
        """Parse and validate a message body for its subject (raises on bad input)."""
        return self.resolve(subject).model_validate_json(data)

    def classes(self) -> list[type[Event]]:
        """Return every registered contract, sorted by subject."""
        return [self._by_pattern[p] for p in sorted(self._by_pattern)]


registry = EventRegistry()
